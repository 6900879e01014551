//! `AGENTS_CONFIG`: the agents (name, description for the classifier, system prompt, tools,
//! optional model), the default agent, the step bound and the model price table. A file that
//! does not describe a usable set of agents is refused at start-up, naming the file, the agent
//! and the field.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::llm::TokenUsage;
use crate::tools::Toolbox;

/// The built-in demo shop.
pub const DEMO_CONFIG: &str = include_str!("demo.yaml");

/// One agent, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub name: String,
    pub description: String,
    pub system_prompt: String,
    pub tools: Vec<String>,
    /// Imported (OpenAPI) tools this agent may use, by name: only those reviewed and enabled
    /// reach it (`/api/admin/tools`).
    pub imported_tools: Vec<String>,
    pub model: Option<String>,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub prompt: f64,
    pub completion: f64,
}

impl Price {
    pub fn cost(&self, usage: TokenUsage) -> f64 {
        (usage.prompt_tokens as f64 * self.prompt
            + usage.completion_tokens as f64 * self.completion)
            / 1_000_000.0
    }
}

/// The agents of this deployment.
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    pub agents: Vec<Agent>,
    /// Runs when the classifier fails or names no known agent.
    pub default_agent: String,
    /// Model calls one agent may make in a turn.
    pub max_steps: u32,
    pub prices: BTreeMap<String, Price>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agents: Vec<RawAgent>,
    #[serde(default)]
    default_agent: Option<String>,
    #[serde(default)]
    max_steps: Option<u32>,
    #[serde(default)]
    prices: BTreeMap<String, Price>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Option<String>,
    description: Option<String>,
    system_prompt: Option<String>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    imported_tools: Vec<String>,
    #[serde(default)]
    model: Option<String>,
}

const DEFAULT_MAX_STEPS: u32 = 6;

impl AgentsConfig {
    /// `AGENTS_CONFIG`, or the built-in demo when unset.
    pub fn load(path: Option<&Path>, toolbox: &Toolbox) -> anyhow::Result<Self> {
        match path {
            None => Self::parse(DEMO_CONFIG, "the built-in demo config", toolbox),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    anyhow::anyhow!("AGENTS_CONFIG {}: cannot read it: {error}", path.display())
                })?;
                Self::parse(&text, &format!("AGENTS_CONFIG {}", path.display()), toolbox)
            }
        }
    }

    /// Parses and checks a config; errors start with `source` and name the agent and the field.
    pub fn parse(text: &str, source: &str, toolbox: &Toolbox) -> anyhow::Result<Self> {
        let raw: RawConfig = serde_yaml_ng::from_str(text)
            .map_err(|error| anyhow::anyhow!("{source}: {}", describe_yaml_error(text, &error)))?;
        let fail = |agent: &str, field: &str, problem: String| {
            anyhow::anyhow!("{source}: {agent}: field `{field}`: {problem}")
        };
        if raw.agents.is_empty() {
            return Err(anyhow::anyhow!(
                "{source}: field `agents`: at least one agent is needed"
            ));
        }
        let mut agents = Vec::with_capacity(raw.agents.len());
        let mut seen = HashSet::new();
        for (index, agent) in raw.agents.into_iter().enumerate() {
            let label = match &agent.name {
                Some(name) => format!("agent {name:?}"),
                None => format!("agent #{}", index + 1),
            };
            let name = required(agent.name, &label, "name", &fail)?;
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(fail(
                    &label,
                    "name",
                    "use letters, digits, `_` and `-` only".into(),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(fail(&label, "name", "two agents have this name".into()));
            }
            let description = required(agent.description, &label, "description", &fail)?;
            let system_prompt = required(agent.system_prompt, &label, "system_prompt", &fail)?;
            for tool in &agent.tools {
                if toolbox.get(tool).is_none() {
                    let known: Vec<&str> = toolbox.names().collect();
                    return Err(fail(
                        &label,
                        "tools",
                        format!("unknown tool {tool:?} (known: {})", known.join(", ")),
                    ));
                }
            }
            if agent
                .model
                .as_deref()
                .is_some_and(|model| model.trim().is_empty())
            {
                return Err(fail(&label, "model", "must not be empty".into()));
            }
            agents.push(Agent {
                name,
                description,
                system_prompt,
                tools: agent.tools,
                imported_tools: agent.imported_tools,
                model: agent.model,
            });
        }
        let default_agent = match raw.default_agent {
            Some(name) if agents.iter().any(|agent| agent.name == name) => name,
            Some(name) => {
                return Err(anyhow::anyhow!(
                    "{source}: field `default_agent`: no agent is named {name:?}"
                ))
            }
            None => agents
                .iter()
                .find(|agent| agent.name == "general")
                .unwrap_or(&agents[0])
                .name
                .clone(),
        };
        let max_steps = raw.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
        if max_steps == 0 {
            return Err(anyhow::anyhow!(
                "{source}: field `max_steps`: must be at least 1"
            ));
        }
        for (model, price) in &raw.prices {
            if !(price.prompt >= 0.0 && price.completion >= 0.0) {
                return Err(anyhow::anyhow!(
                    "{source}: field `prices.{model}`: prices cannot be negative"
                ));
            }
        }
        Ok(Self {
            agents,
            default_agent,
            max_steps,
            prices: raw.prices,
        })
    }

    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|agent| agent.name == name)
    }

    /// What `model` costs for `usage`; 0 for a model the price table does not list.
    pub fn cost(&self, model: &str, usage: TokenUsage) -> f64 {
        self.prices
            .get(model)
            .map_or(0.0, |price| price.cost(usage))
    }
}

fn required(
    value: Option<String>,
    label: &str,
    field: &str,
    fail: &impl Fn(&str, &str, String) -> anyhow::Error,
) -> anyhow::Result<String> {
    match value {
        Some(value) if !value.trim().is_empty() => Ok(value),
        Some(_) => Err(fail(label, field, "must not be empty".into())),
        None => Err(fail(label, field, "missing".into())),
    }
}

/// A YAML error with the agent's name in place of its index, where the error is inside one:
/// `agents[1]: unknown field ...` becomes `agent "billing" (agents[1]): unknown field ...`.
fn describe_yaml_error(text: &str, error: &serde_yaml_ng::Error) -> String {
    let message = error.to_string();
    let Some(rest) = message.strip_prefix("agents[") else {
        return message;
    };
    let Some((index, _)) = rest.split_once(']') else {
        return message;
    };
    let name = index.parse::<usize>().ok().and_then(|index| {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
        value
            .get("agents")?
            .get(index)?
            .get("name")?
            .as_str()
            .map(str::to_owned)
    });
    match name {
        Some(name) => format!("agent {name:?} ({message})"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<AgentsConfig> {
        AgentsConfig::parse(text, "AGENTS_CONFIG x.yaml", &Toolbox::demo().unwrap())
    }

    #[test]
    fn the_demo_config_is_valid() {
        let config = parse(DEMO_CONFIG).unwrap();
        let names: Vec<_> = config.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["orders", "billing", "general"]);
        assert_eq!(config.default_agent, "general");
        let usage = TokenUsage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
        };
        assert!((config.cost("gpt-4o-mini", usage) - 0.75).abs() < 1e-9);
        assert_eq!(config.cost("unknown-model", usage), 0.0);
    }

    #[test]
    fn errors_name_the_file_the_agent_and_the_field() {
        let missing = parse("agents:\n  - name: orders\n    description: d\n").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "AGENTS_CONFIG x.yaml: agent \"orders\": field `system_prompt`: missing"
        );
        let tool = parse(
            "agents:\n  - name: shop\n    description: d\n    system_prompt: p\n    tools: [launch_rocket]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(tool.starts_with("AGENTS_CONFIG x.yaml: agent \"shop\": field `tools`: unknown tool \"launch_rocket\""), "{tool}");
        let typo = parse(
            "agents:\n  - name: a\n    description: d\n    system_prompt: p\n  - name: billing\n    description: d\n    systm_prompt: p\n",
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("agent \"billing\""), "{typo}");
        assert!(typo.contains("systm_prompt"), "{typo}");
        let default = parse("default_agent: nobody\nagents:\n  - name: a\n    description: d\n    system_prompt: p\n")
            .unwrap_err()
            .to_string();
        assert!(default.contains("field `default_agent`"), "{default}");
        assert!(parse("agents: []\n").is_err());
        assert!(parse("agents: [").is_err());
    }
}

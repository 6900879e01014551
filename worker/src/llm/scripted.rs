//! The scripted model: offline and deterministic, so the whole stack runs with no key and tests
//! are exact. It reads the conversation the way a real model would be asked to, and answers by
//! fixed rules (SPEC §5's demo):
//! - classification by keywords: an order question → `orders`; invoices and refunds →
//!   `billing`; policies → `general`; two of them in one message → both, in the order asked;
//!   "help" alone → ambiguous, with a clarifying question; nothing recognised → the default agent;
//! - an agent whose tools fit the request calls one (order number taken from the message);
//!   after a tool result it reads the result's `summary` out; otherwise it streams a general
//!   reply of `SCRIPTED_REPLY_TOKENS` tokens.
//!
//! Reply length and per-token delay are settable, for load tests.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt as _};
use serde_json::{json, Value};

use super::{
    ChatEvent, ChatMessage, ChatRequest, ChatStream, Classification, Classified, ClassifyRequest,
    Completion, Intent, LlmError, Model, TokenUsage, ToolCall,
};

const WORDS: [&str; 12] = [
    "Thanks", "for", "reaching", "out", "to", "Smart", "Support", "we", "are", "on", "it", "now",
];

/// The name the scripted model goes by (its price-table key).
pub const MODEL_NAME: &str = "scripted";

/// Tokens the scripted model streams before a simulated failure.
pub const TOKENS_BEFORE_FAILURE: usize = 2;

/// Word stems that route a message to the demo agents.
const ORDER_WORDS: [&str; 12] = [
    "cancel", "where", "status", "track", "deliver", "arrive", "package", "parcel", "shipped",
    "order", "late", "eta",
];
const BILLING_WORDS: [&str; 8] = [
    "invoice",
    "bill",
    "refund",
    "charge",
    "paid",
    "receipt",
    "money",
    "overcharg",
];
const GENERAL_WORDS: [&str; 10] = [
    "policy", "return", "hours", "password", "warranty", "faq", "shipping", "payment", "contact",
    "open",
];
/// Asking for a person: the general agent escalates.
const HUMAN_WORDS: [&str; 5] = ["human", "person", "representative", "manager", "someone"];
/// A message made only of these words (and at least one "help") is too vague to route.
const VAGUE_WORDS: [&str; 9] = [
    "help", "me", "please", "i", "need", "hi", "hello", "can", "you",
];

/// Streams `reply_tokens` tokens, `token_delay` apart.
#[derive(Debug, Clone)]
pub struct ScriptedModel {
    pub reply_tokens: u32,
    pub token_delay: Duration,
    /// Content that makes the model fail mid-reply (a simulated outage).
    pub fail_on: Option<String>,
    /// Content that makes the model panic (a drill of a bug inside a turn).
    pub panic_on: Option<String>,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Position of the first word that starts with one of `stems`.
fn first_match(words: &[String], stems: &[&str]) -> Option<usize> {
    words
        .iter()
        .position(|word| stems.iter().any(|stem| word.starts_with(stem)))
}

/// The conversation's latest user message: what the scripted model answers.
fn last_user_message(messages: &[ChatMessage]) -> Option<&str> {
    messages.iter().rev().find_map(|message| match message {
        ChatMessage::User { content } => Some(content.as_str()),
        _ => None,
    })
}

/// Rough token count: one per word.
fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The first order-like number in the text (the demo's orders are 1001–1010).
fn order_number(text: &str) -> Option<i64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|digits| (3..=9).contains(&digits.len()))
        .find_map(|digits| digits.parse().ok())
}

impl ScriptedModel {
    /// The general reply's tokens, in order: the words of a fixed sentence, cycled, each with a
    /// trailing space.
    pub fn reply_tokens(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.reply_tokens as usize).map(|i| {
            let word = WORDS[i % WORDS.len()];
            if i + 1 == self.reply_tokens as usize {
                format!("{word}.")
            } else {
                format!("{word} ")
            }
        })
    }

    /// Whether the model fails on this message, after [`TOKENS_BEFORE_FAILURE`] tokens.
    pub fn fails_on(&self, content: &str) -> bool {
        self.fail_on
            .as_deref()
            .is_some_and(|marker| !marker.is_empty() && content.contains(marker))
    }

    /// Whether the model panics on this message (`SCRIPTED_PANIC_ON`, a drill).
    pub fn panics_on(&self, content: &str) -> bool {
        self.panic_on
            .as_deref()
            .is_some_and(|marker| !marker.is_empty() && content.contains(marker))
    }

    fn classification(&self, request: &ClassifyRequest<'_>) -> Classification {
        let words = words(request.message);
        let vague = words.iter().any(|word| word == "help")
            && words
                .iter()
                .all(|word| VAGUE_WORDS.contains(&word.as_str()));
        if vague {
            let topics: Vec<String> = request
                .agents
                .iter()
                .map(|agent| format!("{} ({})", agent.name, agent.description))
                .collect();
            return Classification {
                intents: Vec::new(),
                ambiguous: true,
                clarification: Some(format!(
                    "Happy to help! What is it about? I can help with: {}.",
                    topics.join("; ")
                )),
            };
        }
        let mut found: Vec<(usize, &str)> = request
            .agents
            .iter()
            .filter_map(|agent| {
                let stems: &[&str] = match agent.name.as_str() {
                    "orders" => &ORDER_WORDS,
                    "billing" => &BILLING_WORDS,
                    "general" => &GENERAL_WORDS,
                    _ => &[],
                };
                let by_keyword = first_match(&words, stems).or_else(|| {
                    (agent.name == "general")
                        .then(|| first_match(&words, &HUMAN_WORDS))
                        .flatten()
                });
                let by_name = words.iter().position(|word| *word == agent.name);
                by_keyword
                    .into_iter()
                    .chain(by_name)
                    .min()
                    .map(|at| (at, agent.name.as_str()))
            })
            .collect();
        // "order" alone also appears in billing and policy questions: then it is not an orders
        // request of its own, unless the message says what to do with the order.
        let order_only = first_match(&words, &ORDER_WORDS)
            .is_some_and(|at| words[at].starts_with("order"))
            && words
                .iter()
                .filter(|word| ORDER_WORDS.iter().any(|stem| word.starts_with(stem)))
                .all(|word| word.starts_with("order"));
        if found.len() > 1 && order_only {
            found.retain(|(_, name)| *name != "orders");
        }
        found.sort_by_key(|(at, _)| *at);
        Classification {
            intents: found
                .into_iter()
                .map(|(_, name)| Intent {
                    agent: name.to_owned(),
                    confidence: 0.9,
                })
                .collect(),
            ambiguous: false,
            clarification: None,
        }
    }

    /// What the agent does next: call a tool, read a tool's result out, or reply.
    fn answer(&self, request: &ChatRequest<'_>) -> Answer {
        let has_tool = |name: &str| request.tools.iter().any(|tool| tool.name == name);
        match request.messages.last() {
            Some(ChatMessage::Tool { content, .. }) => {
                let result: Value = serde_json::from_str(content).unwrap_or(Value::Null);
                let text = if result["declined"] == true {
                    "Understood, I have left it as it is. Is there anything else I can do?"
                        .to_owned()
                } else if let Some(error) = result["error"].as_str() {
                    format!("Sorry, that did not work: {error}")
                } else if let Some(summary) = result["summary"]
                    .as_str()
                    // An imported (HTTP) tool's answer: its body's summary.
                    .or_else(|| result["body"]["summary"].as_str())
                {
                    summary.to_owned()
                } else {
                    "Done.".to_owned()
                };
                Answer::Text(text)
            }
            _ => {
                let user = last_user_message(request.messages).unwrap_or_default();
                let words = words(user);
                let wants = |stems: &[&str]| first_match(&words, stems).is_some();
                let tool = if has_tool("escalate_to_human") && wants(&HUMAN_WORDS) {
                    Some("escalate_to_human")
                } else if has_tool("cancel_order") && wants(&["cancel"]) {
                    Some("cancel_order")
                } else if has_tool("request_refund") && wants(&["refund", "money"]) {
                    Some("request_refund")
                } else if has_tool("get_invoice") && wants(&BILLING_WORDS) {
                    Some("get_invoice")
                } else if has_tool("get_order_status") && wants(&ORDER_WORDS) {
                    Some("get_order_status")
                } else if has_tool("search_faq") && wants(&GENERAL_WORDS) {
                    Some("search_faq")
                } else {
                    None
                };
                let Some(tool) = tool else {
                    return Answer::General;
                };
                let args = if tool == "search_faq" {
                    json!({"query": user})
                } else if tool == "escalate_to_human" {
                    json!({"reason": user})
                } else {
                    let Some(order_id) = order_number(user) else {
                        return Answer::Text(
                            "Which order do you mean? Please tell me its number (the demo shop has orders 1001 to 1010).".into(),
                        );
                    };
                    match tool {
                        "cancel_order" | "request_refund" => {
                            json!({"order_id": order_id, "reason": "customer request"})
                        }
                        _ => json!({"order_id": order_id}),
                    }
                };
                Answer::Call(ToolCall {
                    id: format!("call_{}", request.messages.len()),
                    name: tool.to_owned(),
                    arguments: args.to_string(),
                })
            }
        }
    }

    fn tokens_of(text: &str) -> Vec<String> {
        let pieces: Vec<&str> = text.split_inclusive(' ').collect();
        pieces.into_iter().map(str::to_owned).collect()
    }
}

enum Answer {
    Call(ToolCall),
    Text(String),
    General,
}

impl Model for ScriptedModel {
    fn default_model(&self) -> &str {
        MODEL_NAME
    }

    fn classify<'a>(
        &'a self,
        request: ClassifyRequest<'a>,
    ) -> BoxFuture<'a, Result<Classified, LlmError>> {
        let classification = self.classification(&request);
        let prompt_tokens = count_tokens(request.message)
            + request
                .agents
                .iter()
                .map(|agent| count_tokens(&agent.description) + 1)
                .sum::<u64>();
        Box::pin(async move {
            Ok(Classified {
                classification: Ok(classification),
                usage: TokenUsage {
                    prompt_tokens,
                    completion_tokens: 10,
                },
            })
        })
    }

    fn chat<'a>(&'a self, request: ChatRequest<'a>) -> BoxFuture<'a, Result<ChatStream, LlmError>> {
        let prompt_tokens: u64 = request
            .messages
            .iter()
            .map(|message| match message {
                ChatMessage::System { content }
                | ChatMessage::User { content }
                | ChatMessage::Tool { content, .. } => count_tokens(content),
                ChatMessage::Assistant { content, .. } => count_tokens(content) + 1,
            })
            .sum();
        let user = last_user_message(request.messages);
        // A drill: a bug in a turn. The delivery catches it and counts a failed attempt.
        if user.is_some_and(|content| self.panics_on(content)) {
            panic!("the scripted model panicked (SCRIPTED_PANIC_ON matched the message)");
        }
        let fails = user.is_some_and(|content| self.fails_on(content));
        let (tokens, tool_calls): (Vec<String>, Vec<ToolCall>) = match self.answer(&request) {
            Answer::Call(call) => (Vec::new(), vec![call]),
            Answer::Text(text) => (Self::tokens_of(&text), Vec::new()),
            Answer::General => (self.reply_tokens().collect(), Vec::new()),
        };
        let completion_tokens = tokens.len() as u64 + 10 * tool_calls.len() as u64;
        let finish_reason = if tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        let mut events: Vec<Result<ChatEvent, LlmError>> = Vec::new();
        for (index, token) in tokens.into_iter().enumerate() {
            if fails && index == TOKENS_BEFORE_FAILURE {
                // What a provider outage looks like mid-stream: some tokens went out.
                events.push(Err(LlmError::Permanent(
                    "the scripted model failed (SCRIPTED_FAIL_ON matched the message)".into(),
                )));
                break;
            }
            events.push(Ok(ChatEvent::Text(token)));
        }
        if !fails || events.iter().all(Result::is_ok) {
            events.push(Ok(ChatEvent::Done(Completion {
                tool_calls,
                usage: TokenUsage {
                    prompt_tokens,
                    completion_tokens,
                },
                finish_reason: finish_reason.into(),
            })));
        }
        let delay = self.token_delay;
        let stream: ChatStream = stream::iter(events)
            .then(move |event| async move {
                match &event {
                    Ok(ChatEvent::Text(_)) if !delay.is_zero() => tokio::time::sleep(delay).await,
                    // An outage is noticed over the network, after the tokens before it went out.
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    _ => {}
                }
                event
            })
            .boxed();
        Box::pin(async move { Ok(stream) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{AgentCard, ToolDefinition};

    fn model() -> ScriptedModel {
        ScriptedModel {
            reply_tokens: 20,
            token_delay: Duration::ZERO,
            fail_on: Some("boom".into()),
            panic_on: None,
        }
    }

    fn cards() -> Vec<AgentCard> {
        ["orders", "billing", "general"]
            .into_iter()
            .map(|name| AgentCard {
                name: name.into(),
                description: format!("{name} things"),
            })
            .collect()
    }

    fn classify(message: &str) -> Classification {
        let agents = cards();
        model().classification(&ClassifyRequest {
            model: MODEL_NAME,
            message,
            agents: &agents,
        })
    }

    fn routed(message: &str) -> Vec<String> {
        classify(message)
            .intents
            .into_iter()
            .map(|i| i.agent)
            .collect()
    }

    #[test]
    fn general_replies_have_the_configured_length() {
        let model = model();
        assert!(model.fails_on("it goes boom"));
        assert!(!model.fails_on("all good"));
        let tokens: Vec<_> = model.reply_tokens().collect();
        assert_eq!(tokens.len(), 20);
        assert_eq!(tokens[0], "Thanks ");
        assert!(tokens[19].ends_with('.'));
    }

    #[test]
    fn classifies_the_demo_requests() {
        assert_eq!(routed("Where is my order 1002?"), ["orders"]);
        assert_eq!(
            routed("Please send me the invoice for order 1004"),
            ["billing"]
        );
        assert_eq!(routed("What is your return policy?"), ["general"]);
        assert_eq!(
            routed("Cancel order 1003 and refund it please"),
            ["orders", "billing"]
        );
        assert!(routed("hello there").is_empty());
        let help = classify("help");
        assert!(help.ambiguous);
        assert!(help.clarification.unwrap().contains("orders"));
    }

    #[tokio::test]
    async fn an_order_question_calls_the_tool_then_reads_its_result() {
        let model = model();
        let tools: Vec<ToolDefinition> = ["get_order_status", "cancel_order"]
            .into_iter()
            .map(|name| ToolDefinition {
                name: name.into(),
                description: String::new(),
                parameters: json!({}),
            })
            .collect();
        let mut messages = vec![
            ChatMessage::System {
                content: "You help.".into(),
            },
            ChatMessage::User {
                content: "Where is order 1002?".into(),
            },
        ];
        let request = ChatRequest {
            model: MODEL_NAME,
            agent: "orders",
            messages: &messages,
            tools: &tools,
        };
        let events: Vec<_> = model.chat(request).await.unwrap().collect().await;
        let Ok(ChatEvent::Done(done)) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(done.tool_calls[0].name, "get_order_status");
        assert_eq!(done.tool_calls[0].arguments, r#"{"order_id":1002}"#);
        messages.push(ChatMessage::Tool {
            tool_call_id: done.tool_calls[0].id.clone(),
            content: json!({"summary": "Order 1002 has shipped."}).to_string(),
        });
        let request = ChatRequest {
            model: MODEL_NAME,
            agent: "orders",
            messages: &messages,
            tools: &tools,
        };
        let events: Vec<_> = model.chat(request).await.unwrap().collect().await;
        let text: String = events
            .iter()
            .filter_map(|event| match event {
                Ok(ChatEvent::Text(text)) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Order 1002 has shipped.");
    }
}

//! The agent graph of one turn: classify the message (supervisor), run the chosen specialist
//! agents in order, each a loop of model → tool calls → tool results → model with a bound on
//! steps, and pause the turn at a tool that needs approval. A paused turn is a [`Checkpoint`]
//! in PostgreSQL; the `interrupt_response` continues it on whichever worker takes it.
//!
//! Model calls are retried in place (backon: exponential, jitter, `Retry-After` honoured) while
//! nothing of the call reached the client. A call that fails after its tokens went out restarts
//! the segment after a `turn_reset` frame.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use chrono::Utc;
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::{json, Value};
use shared::protocol::{FrameBody, Usage};
use shared::timeline::{ApprovalDecision, TimelineEvent};
use shared::turns::InterruptId;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::agents::{Agent, AgentsConfig, FrameSink};
use crate::error::TurnError;
use crate::llm::{
    AgentCard, ChatEvent, ChatMessage, ChatRequest, Classification, ClassifyRequest, Completion,
    LlmError, Model, TokenUsage, ToolCall,
};
use crate::metrics::{WorkerMetrics, UNKNOWN_TOOL};
use crate::observe;
use crate::records::{AgentShare, Checkpoint, Decision, Ended, Outcome, PendingInterrupt};
use crate::store::{ApprovedRun, NewInterrupt, RemoteClaim, Store};
use crate::tools::http::HttpSettings;
use crate::tools::{RegisteredTool, ToolContext, ToolError, Toolbox};

/// Times a segment is restarted after a model failure that followed some of its output.
const MAX_RESETS: u32 = 2;

/// The longest `Retry-After` honoured; a server asking for more is retried at this delay.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Backoff of model and tool retries within a turn.
fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(4)
        .with_jitter()
        .build()
}

/// The turn a segment belongs to.
#[derive(Debug, Clone, Copy)]
pub struct TurnInfo<'a> {
    pub thread_id: &'a str,
    pub turn_id: Uuid,
    pub in_seq: u64,
    /// Cancelled when the turn must stop (SPEC §8): it is checked between model chunks and
    /// before every model call, tool call and approval.
    pub cancel: &'a tokio_util::sync::CancellationToken,
}

/// Everything the agent graph needs.
#[derive(Clone)]
pub struct Graph {
    pub config: Arc<AgentsConfig>,
    pub toolbox: Arc<Toolbox>,
    pub model: Arc<dyn Model>,
    /// Where approvals, the approval ledger and tools' connections are: the graph asks it.
    pub store: Store,
    pub interrupt_ttl: Duration,
    pub metrics: WorkerMetrics,
    /// How imported tools call out.
    pub http: Arc<HttpSettings>,
}

/// Why a segment stopped early.
enum Stop {
    /// A model call failed after some of its output went out (`emitted`), or for good.
    Model {
        error: LlmError,
        emitted: bool,
    },
    Turn(TurnError),
    /// The turn was cancelled: it ends here, with what it did so far.
    Cancelled,
}

impl From<TurnError> for Stop {
    fn from(error: TurnError) -> Self {
        Self::Turn(error)
    }
}

impl From<sqlx::Error> for Stop {
    fn from(error: sqlx::Error) -> Self {
        Self::Turn(error.into())
    }
}

/// A segment in progress.
struct Run<'a> {
    turn: TurnInfo<'a>,
    state: Checkpoint,
    reply: String,
    usage: Usage,
    events: Vec<TimelineEvent>,
    /// What each agent did in this segment, in the order they ran.
    agents: Vec<AgentShare>,
    /// A tool that hands the conversation to a human ran.
    escalated: bool,
    /// Each agent's tools, read once per segment.
    toolsets: std::collections::HashMap<String, Arc<Vec<RegisteredTool>>>,
}

impl Run<'_> {
    /// Puts an event on the segment's timeline.
    fn event(&mut self, event: TimelineEvent) {
        self.events.push(event);
    }

    /// The share of `agent`, created when it first acts in this segment.
    fn share(&mut self, agent: &str) -> &mut AgentShare {
        let index = match self.agents.iter().position(|share| share.agent == agent) {
            Some(index) => index,
            None => {
                self.agents.push(AgentShare {
                    agent: agent.to_owned(),
                    ..AgentShare::default()
                });
                self.agents.len() - 1
            }
        };
        &mut self.agents[index]
    }

    fn total(&self) -> Usage {
        Usage {
            prompt_tokens: self.state.usage.prompt_tokens + self.usage.prompt_tokens,
            completion_tokens: self.state.usage.completion_tokens + self.usage.completion_tokens,
            cost_usd: self.state.usage.cost_usd + self.usage.cost_usd,
        }
    }

    fn ended(mut self, outcome: Outcome) -> Ended {
        for share in &self.agents {
            self.events.push(TimelineEvent::AgentReply {
                agent: share.agent.clone(),
                content: share.reply.clone(),
                prompt_tokens: share.usage.prompt_tokens,
                completion_tokens: share.usage.completion_tokens,
                cost_usd: share.usage.cost_usd,
                tool_calls: share.tool_calls,
                duration_ms: share.duration.as_millis() as u64,
                at: Utc::now(),
            });
        }
        Ended {
            outcome,
            reply: self.reply,
            usage: self.usage,
            agents: self.state.agents_run,
            events: self.events,
            shares: self.agents,
            escalated: self.escalated,
        }
    }
}

impl Graph {
    /// Runs the turn of a user message: classify, then the agents.
    pub async fn run_message(
        &self,
        out: &mut impl FrameSink,
        turn: TurnInfo<'_>,
        content: &str,
        history: Vec<ChatMessage>,
    ) -> Result<Ended, TurnError> {
        let start = Checkpoint {
            user_message: content.to_owned(),
            history,
            ..Checkpoint::default()
        };
        self.with_resets(out, turn, start, None).await
    }

    /// Continues a paused turn with the user's decision on its approval.
    pub async fn resume(
        &self,
        out: &mut impl FrameSink,
        turn: TurnInfo<'_>,
        pending: &PendingInterrupt,
        decision: Decision,
    ) -> Result<Ended, TurnError> {
        self.with_resets(
            out,
            turn,
            pending.checkpoint.clone(),
            Some((pending, decision)),
        )
        .await
    }

    /// Runs a segment; restarts it after a `turn_reset` when a model call fails once its
    /// output reached the client.
    async fn with_resets(
        &self,
        out: &mut impl FrameSink,
        turn: TurnInfo<'_>,
        start: Checkpoint,
        decision: Option<(&PendingInterrupt, Decision)>,
    ) -> Result<Ended, TurnError> {
        let mut resets = 0;
        let mut delays = retry_delays();
        let mut reset_events = Vec::new();
        // Calls of a discarded attempt were made all the same: the turn's usage keeps them.
        let mut spent = Usage::default();
        loop {
            let mut run = Run {
                turn,
                state: start.clone(),
                reply: String::new(),
                usage: spent,
                events: std::mem::take(&mut reset_events),
                agents: Vec::new(),
                escalated: false,
                toolsets: Default::default(),
            };
            let result = match decision {
                Some((pending, decision)) => {
                    self.continue_after(out, &mut run, pending, decision).await
                }
                None => self.start_message(out, &mut run).await,
            };
            match result {
                Ok(outcome) => return Ok(run.ended(outcome)),
                Err(Stop::Turn(error)) => return Err(error),
                Err(Stop::Cancelled) => {
                    run.event(TimelineEvent::Cancelled {
                        interrupt_id: None,
                        decision: None,
                        by: None,
                        note: None,
                        at: Utc::now(),
                    });
                    out.send(FrameBody::MessageComplete {
                        usage: run.total(),
                        cancelled: true,
                    })
                    .await?;
                    return Ok(run.ended(Outcome::Cancelled));
                }
                Err(Stop::Model { error, emitted }) => {
                    let delay = delays.next();
                    match delay {
                        Some(delay) if error.is_transient() && emitted && resets < MAX_RESETS => {
                            resets += 1;
                            tracing::warn!(%error, resets, "A model stream failed after its output went out; resetting the turn.");
                            out.send(FrameBody::TurnReset).await?;
                            out.flush().await?;
                            reset_events = run.events;
                            spent = run.usage;
                            reset_events.push(TimelineEvent::TurnReset {
                                error: error.to_string(),
                            });
                            // A cancel during the pause ends the next attempt at its first check.
                            tokio::select! {
                                () = tokio::time::sleep(pause(&error, delay)) => {}
                                () = turn.cancel.cancelled() => {}
                            }
                        }
                        _ => {
                            return Err(match error {
                                // Every attempt would be refused the same way.
                                LlmError::Rejected(_) => TurnError::Rejected(format!(
                                    "the model server refused the request: {error}"
                                )),
                                _ => TurnError::Turn(format!("the model failed: {error}")),
                            });
                        }
                    }
                }
            }
        }
    }

    async fn start_message(
        &self,
        out: &mut impl FrameSink,
        run: &mut Run<'_>,
    ) -> Result<Outcome, Stop> {
        let cancel = run.turn.cancel;
        let classification = tokio::select! {
            classification = self.classify(run) => classification,
            () = cancel.cancelled() => return Err(Stop::Cancelled),
        };
        check(cancel)?;
        if classification.ambiguous {
            let message = classification
                .clarification
                .filter(|text| !text.trim().is_empty())
                .unwrap_or_else(|| "Could you tell me a little more about what you need?".into());
            run.events.push(TimelineEvent::Clarification {
                message: message.clone(),
            });
            out.send(FrameBody::Clarification { message }).await?;
            out.send(FrameBody::MessageComplete {
                usage: run.total(),
                cancelled: false,
            })
            .await?;
            return Ok(Outcome::Clarification);
        }
        let mut agents: Vec<String> = Vec::new();
        for intent in classification.intents {
            if self.config.agent(&intent.agent).is_some() && !agents.contains(&intent.agent) {
                agents.push(intent.agent);
            } else if self.config.agent(&intent.agent).is_none() {
                tracing::warn!(agent = %intent.agent, "The classifier named an unknown agent; ignoring it.");
            }
        }
        if agents.is_empty() {
            agents.push(self.config.default_agent.clone());
        }
        run.state.agents = agents;
        self.run_agents(out, run).await
    }

    /// Classifies the message; a classifier that keeps failing, or names no agent, routes to
    /// the default agent instead of failing the turn.
    async fn classify(&self, run: &mut Run<'_>) -> Classification {
        let cards: Vec<AgentCard> = self
            .config
            .agents
            .iter()
            .map(|agent| AgentCard {
                name: agent.name.clone(),
                description: agent.description.clone(),
            })
            .collect();
        let model = self.model.default_model().to_owned();
        let mut delays = retry_delays();
        loop {
            let request = ClassifyRequest {
                model: &model,
                message: &run.state.user_message,
                agents: &cards,
            };
            let span = observe::chat_span(&model, run.turn.thread_id);
            let started = std::time::Instant::now();
            let classified = self.model.classify(request).instrument(span.clone()).await;
            self.time_call(&model, "classify", started);
            match classified {
                Ok(classified) => {
                    // The call was made and answered: it counts, usable or not.
                    observe::record_usage(&span, classified.usage);
                    self.count_usage(run, None, &model, classified.usage);
                    match classified.classification {
                        Ok(classification) => {
                            self.count_call("classify", "ok");
                            run.event(TimelineEvent::Classification {
                                result: serde_json::to_value(&classification).unwrap_or_default(),
                                at: Utc::now(),
                            });
                            return classification;
                        }
                        Err(reason) => return self.fall_back(run, &reason),
                    }
                }
                Err(error) => {
                    let delay = delays.next();
                    match delay {
                        Some(delay) if error.is_transient() => {
                            self.count_call("classify", "retried");
                            tracing::warn!(%error, "Classification failed; retrying.");
                            tokio::time::sleep(pause(&error, delay)).await;
                        }
                        _ => return self.fall_back(run, &error.to_string()),
                    }
                }
            }
        }
    }

    /// The classification of a message the classifier could not route: the default agent.
    fn fall_back(&self, run: &mut Run<'_>, error: &str) -> Classification {
        self.count_call("classify", "failed");
        tracing::warn!(%error, agent = %self.config.default_agent, "Classification failed; routing to the default agent.");
        run.event(TimelineEvent::ClassificationFailed {
            error: error.to_owned(),
            agent: self.config.default_agent.clone(),
            at: Utc::now(),
        });
        Classification {
            intents: vec![crate::llm::Intent {
                agent: self.config.default_agent.clone(),
                confidence: 0.0,
            }],
            ambiguous: false,
            clarification: None,
        }
    }

    /// Applies the user's decision on the call that waited for it, then goes on with the turn.
    async fn continue_after(
        &self,
        out: &mut impl FrameSink,
        run: &mut Run<'_>,
        pending: &PendingInterrupt,
        decision: Decision,
    ) -> Result<Outcome, Stop> {
        let Some(call) = run.state.pending_calls.first().cloned() else {
            return Err(Stop::Turn(TurnError::Turn(
                "the approval's checkpoint has no pending call".into(),
            )));
        };
        let agent = pending.agent.clone();
        match decision {
            Decision::Approved => {
                run.event(TimelineEvent::Decision {
                    interrupt_id: pending.id,
                    decision: ApprovalDecision::Approved,
                    at: Utc::now(),
                });
                // An approved action of a cancelled turn never starts.
                check(run.turn.cancel)?;
                let tool = self.tool_of(run, &agent, &call.name).await?;
                let Some(tool) = tool else {
                    let result =
                        json!({"error": format!("the tool {} is no longer available", call.name)});
                    self.tool_message(run, &call, &result);
                    return self.after_call(out, run).await;
                };
                out.send(FrameBody::ToolCall {
                    agent: agent.clone(),
                    tool: call.name.clone(),
                    args: pending.params.clone(),
                })
                .await?;
                out.flush().await?;
                let span = observe::tool_span(&call.name, &call.id, run.turn.thread_id);
                let (ok, result) = self
                    .run_approved(run, pending, &tool)
                    .instrument(span)
                    .await?;
                out.send(FrameBody::ToolResult {
                    agent: agent.clone(),
                    tool: call.name.clone(),
                    ok,
                })
                .await?;
                let escalates = tool.spec().escalates;
                announce_escalation(out, run, escalates && ok).await?;
                let args = pending.params.clone();
                record_call(run, &agent, &call.name, args, ok, &result, escalates);
                self.tool_message(run, &call, &result);
            }
            Decision::Rejected => {
                run.event(TimelineEvent::Decision {
                    interrupt_id: pending.id,
                    decision: ApprovalDecision::Rejected,
                    at: Utc::now(),
                });
                let result = json!({"declined": true,
                    "message": format!("The user declined; {} was not performed. Do not try it again unless they ask.", call.name)});
                self.tool_message(run, &call, &result);
            }
        }
        self.after_call(out, run).await
    }

    async fn after_call(
        &self,
        out: &mut impl FrameSink,
        run: &mut Run<'_>,
    ) -> Result<Outcome, Stop> {
        run.state.pending_calls.remove(0);
        self.run_agents(out, run).await
    }

    /// The tools `agent` may call in this segment: its built-in tools, and its imported tools
    /// that are reviewed and enabled now (read once per segment).
    async fn tools_for(
        &self,
        run: &mut Run<'_>,
        agent: &str,
    ) -> Result<Arc<Vec<RegisteredTool>>, Stop> {
        if let Some(tools) = run.toolsets.get(agent) {
            return Ok(tools.clone());
        }
        let Some(config) = self.config.agent(agent) else {
            return Ok(Arc::default());
        };
        let mut tools: Vec<RegisteredTool> = config
            .tools
            .iter()
            .filter_map(|name| self.toolbox.get(name).cloned())
            .collect();
        tools.extend(
            self.store
                .usable_imported(&config.imported_tools, &self.http)
                .await?,
        );
        let tools = Arc::new(tools);
        run.toolsets.insert(agent.to_owned(), tools.clone());
        Ok(tools)
    }

    async fn tool_of(
        &self,
        run: &mut Run<'_>,
        agent: &str,
        name: &str,
    ) -> Result<Option<RegisteredTool>, Stop> {
        Ok(self
            .tools_for(run, agent)
            .await?
            .iter()
            .find(|tool| tool.spec().name == name)
            .cloned())
    }

    fn tool_message(&self, run: &mut Run<'_>, call: &ToolCall, result: &Value) {
        run.state.messages.push(ChatMessage::Tool {
            tool_call_id: call.id.clone(),
            content: result.to_string(),
        });
    }

    /// Runs the agents still to run, from wherever the current one stands.
    async fn run_agents(
        &self,
        out: &mut impl FrameSink,
        run: &mut Run<'_>,
    ) -> Result<Outcome, Stop> {
        while let Some(name) = run.state.agents.first().cloned() {
            let Some(agent) = self.config.agent(&name) else {
                tracing::warn!(agent = %name, "A checkpoint names an agent the config no longer has; skipping it.");
                run.state.agents.remove(0);
                run.state.messages.clear();
                run.state.pending_calls.clear();
                continue;
            };
            if run.state.messages.is_empty() {
                run.state.messages.push(ChatMessage::System {
                    content: agent.system_prompt.clone(),
                });
                run.state.messages.extend(run.state.history.iter().cloned());
                run.state.messages.push(ChatMessage::User {
                    content: run.state.user_message.clone(),
                });
                run.state.steps = 0;
                run.state.agents_run.push(agent.name.clone());
                if !run.reply.is_empty() {
                    run.reply.push_str("\n\n");
                }
            }
            let started = std::time::Instant::now();
            let paused = self.run_agent(out, run, agent).await;
            run.share(&agent.name).duration += started.elapsed();
            if let Some(id) = paused? {
                return Ok(Outcome::Interrupted(id));
            }
            run.state.agents.remove(0);
            run.state.messages.clear();
            run.state.pending_calls.clear();
        }
        out.send(FrameBody::MessageComplete {
            usage: run.total(),
            cancelled: false,
        })
        .await?;
        Ok(Outcome::Completed)
    }

    /// One agent's loop. `Some(interrupt)` when it paused for an approval.
    async fn run_agent(
        &self,
        out: &mut impl FrameSink,
        run: &mut Run<'_>,
        agent: &Agent,
    ) -> Result<Option<InterruptId>, Stop> {
        loop {
            while let Some(call) = run.state.pending_calls.first().cloned() {
                check(run.turn.cancel)?;
                if let Some(id) = self.run_call(out, run, agent, &call).await? {
                    return Ok(Some(id));
                }
                run.state.pending_calls.remove(0);
            }
            if run.state.steps >= self.config.max_steps {
                let text = "Sorry, I could not finish this request; please try rephrasing it.";
                tracing::warn!(agent = %agent.name, steps = run.state.steps, "An agent reached its step limit.");
                run.events.push(TimelineEvent::StepLimit {
                    agent: agent.name.clone(),
                });
                out.send(FrameBody::Token {
                    agent: agent.name.clone(),
                    content: text.into(),
                })
                .await?;
                run.reply.push_str(text);
                return Ok(None);
            }
            check(run.turn.cancel)?;
            let (text, completion) = self.step(out, run, agent).await?;
            run.state.steps += 1;
            run.state.messages.push(ChatMessage::Assistant {
                content: text,
                tool_calls: completion.tool_calls.clone(),
            });
            if completion.tool_calls.is_empty() {
                return Ok(None);
            }
            run.state.pending_calls = completion.tool_calls;
        }
    }

    /// Runs one tool call: checks the tool and its arguments, pauses for approval where needed,
    /// and hands the result (or the error) back to the model.
    async fn run_call(
        &self,
        out: &mut impl FrameSink,
        run: &mut Run<'_>,
        agent: &Agent,
        call: &ToolCall,
    ) -> Result<Option<InterruptId>, Stop> {
        let raw_args = serde_json::from_str::<Value>(&call.arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        let Some(tool) = self.tool_of(run, &agent.name, &call.name).await? else {
            let result = json!({"error": format!("there is no tool named {:?}", call.name)});
            // The name is the model's: as a metric label it could be anything, any number of times.
            self.report_failed_call(out, run, agent, call, raw_args, result, UNKNOWN_TOOL)
                .await?;
            return Ok(None);
        };
        let args = match tool.parse_args(&call.arguments) {
            Ok(args) => args,
            Err(problem) => {
                let result = json!({"error": problem});
                let label = tool.spec().name.clone();
                self.report_failed_call(out, run, agent, call, raw_args, result, &label)
                    .await?;
                return Ok(None);
            }
        };
        check(run.turn.cancel)?;
        if tool.spec().requires_approval {
            return self
                .raise_interrupt(out, run, agent, call, args)
                .await
                .map(Some);
        }
        out.send(FrameBody::ToolCall {
            agent: agent.name.clone(),
            tool: call.name.clone(),
            args: args.clone(),
        })
        .await?;
        let key = format!("{}:{}:{}", run.turn.thread_id, run.turn.in_seq, call.id);
        let span = observe::tool_span(&call.name, &call.id, run.turn.thread_id);
        let ran = self.run_tool(&tool, &args, &key).instrument(span);
        let (ok, result) = super::frames::flush_unless_quick(out, ran).await?;
        out.send(FrameBody::ToolResult {
            agent: agent.name.clone(),
            tool: call.name.clone(),
            ok,
        })
        .await?;
        let escalates = tool.spec().escalates;
        announce_escalation(out, run, escalates && ok).await?;
        record_call(run, &agent.name, &call.name, args, ok, &result, escalates);
        self.tool_message(run, call, &result);
        Ok(None)
    }

    /// A call that cannot run (unknown tool, invalid arguments): the client sees it fail, the
    /// model gets the reason as the result. `label` is the metric's `tool`: the agent's tool, or
    /// [`UNKNOWN_TOOL`].
    #[allow(clippy::too_many_arguments)]
    async fn report_failed_call(
        &self,
        out: &mut impl FrameSink,
        run: &mut Run<'_>,
        agent: &Agent,
        call: &ToolCall,
        args: Value,
        result: Value,
        label: &str,
    ) -> Result<(), Stop> {
        self.metrics
            .tool_calls
            .with_label_values(&[label, "invalid"])
            .inc();
        out.send(FrameBody::ToolCall {
            agent: agent.name.clone(),
            tool: call.name.clone(),
            args: args.clone(),
        })
        .await?;
        out.send(FrameBody::ToolResult {
            agent: agent.name.clone(),
            tool: call.name.clone(),
            ok: false,
        })
        .await?;
        record_call(run, &agent.name, &call.name, args, false, &result, false);
        self.tool_message(run, call, &result);
        Ok(())
    }

    /// Runs a tool that needs no approval; its backend failing is retried, then reported to
    /// the model as the result.
    async fn run_tool(
        &self,
        tool: &RegisteredTool,
        args: &Value,
        key: &str,
    ) -> Result<(bool, Value), Stop> {
        let name = tool.spec().name.as_str();
        let mut delays = retry_delays();
        loop {
            let outcome = self.store.run_tool(tool.tool.as_ref(), args, key).await?;
            match outcome {
                Ok(result) => {
                    self.metrics
                        .tool_calls
                        .with_label_values(&[name, "ok"])
                        .inc();
                    return Ok((true, result));
                }
                Err(ToolError::Refused(reason)) => {
                    self.metrics
                        .tool_calls
                        .with_label_values(&[name, "refused"])
                        .inc();
                    return Ok((false, json!({"error": reason})));
                }
                Err(ToolError::Unavailable(reason)) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(tool = name, %reason, "A tool failed; retrying.");
                        tokio::time::sleep(delay).await;
                    }
                    None => {
                        self.metrics
                            .tool_calls
                            .with_label_values(&[name, "failed"])
                            .inc();
                        return Ok((
                            false,
                            json!({"error": format!("the tool is unavailable: {reason}")}),
                        ));
                    }
                },
            }
        }
    }

    /// Runs an approved call at most once: the ledger row keyed by the interrupt id commits in
    /// the same transaction as the tool's effect; a second run finds it and returns its result.
    /// A tool that calls out goes through [`Self::run_approved_remote`] instead.
    async fn run_approved(
        &self,
        run: &mut Run<'_>,
        pending: &PendingInterrupt,
        tool: &RegisteredTool,
    ) -> Result<(bool, Value), Stop> {
        if !tool.tool.needs_database() {
            return self.run_approved_remote(run, pending, tool).await;
        }
        let name = tool.spec().name.clone();
        let mut delays = retry_delays();
        loop {
            let ran = self
                .store
                .run_approved_in_db(
                    pending.id,
                    run.turn.thread_id,
                    tool.tool.as_ref(),
                    &pending.params,
                )
                .await?;
            let (ok, result) = match ran {
                ApprovedRun::AlreadyRan { ok, result } => {
                    run.events.push(TimelineEvent::ToolAlreadyRan {
                        interrupt_id: pending.id,
                    });
                    return Ok((ok, result));
                }
                ApprovedRun::Ran { ok, result } => (ok, result),
                ApprovedRun::Unavailable(reason) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(tool = %name, %reason, "An approved tool failed; retrying.");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    None => {
                        self.metrics
                            .tool_calls
                            .with_label_values(&[name.as_str(), "failed"])
                            .inc();
                        return Err(Stop::Turn(TurnError::Turn(format!(
                            "the tool {name} is unavailable: {reason}"
                        ))));
                    }
                },
            };
            self.metrics
                .tool_calls
                .with_label_values(&[name.as_str(), if ok { "ok" } else { "refused" }])
                .inc();
            return Ok((ok, result));
        }
    }

    /// Runs an approved call of a tool that calls out (HTTP) at most once, with no pooled
    /// connection held across the call:
    /// 1. the ledger row keyed by the interrupt id is claimed in one short statement; a row
    ///    that holds an outcome means the call ran: its stored result is used, nothing is sent;
    /// 2. the call is made with no connection held, with the interrupt id as its
    ///    `Idempotency-Key`;
    /// 3. its outcome is recorded on the row.
    ///
    /// A crash before 1 leaves no row; between 1 and 3 a claimed row without an outcome: either
    /// way the next attempt sends the call again with the same key, which a server honouring
    /// `Idempotency-Key` applies once (the key, not our ledger, is what makes a remote write
    /// happen once when the worker dies not knowing whether it arrived). After 3 the call is
    /// never sent again.
    async fn run_approved_remote(
        &self,
        run: &mut Run<'_>,
        pending: &PendingInterrupt,
        tool: &RegisteredTool,
    ) -> Result<(bool, Value), Stop> {
        let name = tool.spec().name.clone();
        let key = pending.id.to_string();
        let mut delays = retry_delays();
        loop {
            let claim = self
                .store
                .claim_remote(pending.id, run.turn.thread_id, &name, &pending.params)
                .await?;
            if let RemoteClaim::Finished { ok, result } = claim {
                run.events.push(TimelineEvent::ToolAlreadyRan {
                    interrupt_id: pending.id,
                });
                return Ok((ok, result));
            }
            let context = ToolContext {
                db: None,
                idempotency_key: &key,
            };
            let (ok, result) = match tool.tool.call(&pending.params, context).await {
                Ok(result) => (true, result),
                Err(ToolError::Refused(reason)) => (false, json!({"error": reason})),
                Err(ToolError::Unavailable(reason)) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(tool = %name, %reason, "An approved tool failed; retrying.");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    None => {
                        self.metrics
                            .tool_calls
                            .with_label_values(&[name.as_str(), "failed"])
                            .inc();
                        return Err(Stop::Turn(TurnError::Turn(format!(
                            "the tool {name} is unavailable: {reason}"
                        ))));
                    }
                },
            };
            let (ok, result) = self.store.record_remote(pending.id, ok, &result).await?;
            self.metrics
                .tool_calls
                .with_label_values(&[name.as_str(), if ok { "ok" } else { "refused" }])
                .inc();
            return Ok((ok, result));
        }
    }

    /// Pauses the turn on a call that needs approval: the checkpoint is stored first, then the
    /// `interrupt` frame tells the client.
    async fn raise_interrupt(
        &self,
        out: &mut impl FrameSink,
        run: &mut Run<'_>,
        agent: &Agent,
        call: &ToolCall,
        args: Value,
    ) -> Result<InterruptId, Stop> {
        let id = InterruptId::generate();
        let now = chrono::Utc::now();
        let expires_at = chrono::Duration::from_std(self.interrupt_ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let mut checkpoint = run.state.clone();
        checkpoint.usage = run.total();
        let checkpoint = serde_json::to_value(&checkpoint).map_err(|error| {
            Stop::Turn(TurnError::Turn(format!(
                "the checkpoint does not encode: {error}"
            )))
        })?;
        self.store
            .raise_interrupt(&NewInterrupt {
                id,
                thread_id: run.turn.thread_id,
                turn_id: run.turn.turn_id,
                in_seq: run.turn.in_seq,
                agent: &agent.name,
                action: &call.name,
                params: &args,
                checkpoint: &checkpoint,
                expires_at,
            })
            .await?;
        self.metrics.interrupts.with_label_values(&["raised"]).inc();
        run.event(TimelineEvent::Interrupt {
            interrupt_id: id,
            agent: agent.name.clone(),
            action: call.name.clone(),
            params: args.clone(),
            expires_at,
            at: Utc::now(),
        });
        out.send(FrameBody::Interrupt {
            interrupt_id: id,
            action: call.name.clone(),
            params: args,
            expires_at,
        })
        .await?;
        Ok(id)
    }

    /// One model call of an agent, streamed to the client as `token` frames. Retried in place
    /// while none of its output went out.
    async fn step(
        &self,
        out: &mut impl FrameSink,
        run: &mut Run<'_>,
        agent: &Agent,
    ) -> Result<(String, Completion), Stop> {
        let model = agent
            .model
            .clone()
            .unwrap_or_else(|| self.model.default_model().to_owned());
        let tools: Vec<_> = self
            .tools_for(run, &agent.name)
            .await?
            .iter()
            .map(RegisteredTool::definition)
            .collect();
        let mut delays = retry_delays();
        loop {
            let mut emitted = false;
            let mut text = String::new();
            let span = observe::chat_span(&model, run.turn.thread_id);
            let started = std::time::Instant::now();
            let result = self
                .stream_step(out, &model, agent, run, &tools, &mut text, &mut emitted)
                .instrument(span.clone())
                .await;
            self.time_call(&model, "chat", started);
            match result {
                Ok(completion) if !emitted && completion.tool_calls.is_empty() => {
                    // An empty answer is a failure of its own, never a reply: it counts, and
                    // it is retried like a transient failure (nothing reached the client);
                    // one that stays empty fails the attempt.
                    self.count_usage(run, Some(&agent.name), &model, completion.usage);
                    run.event(TimelineEvent::ModelEmpty {
                        agent: agent.name.clone(),
                        finish_reason: completion.finish_reason.clone(),
                        at: Utc::now(),
                    });
                    match delays.next() {
                        Some(delay) => {
                            self.count_call("chat", "empty");
                            tracing::warn!(agent = %agent.name, finish_reason = %completion.finish_reason, "The model's answer was empty; retrying.");
                            tokio::time::sleep(delay).await;
                        }
                        None => {
                            self.count_call("chat", "failed");
                            return Err(Stop::Model {
                                error: LlmError::Permanent(format!(
                                    "the model's answer stayed empty (finish_reason {})",
                                    completion.finish_reason
                                )),
                                emitted: false,
                            });
                        }
                    }
                }
                Ok(completion) => {
                    observe::record_usage(&span, completion.usage);
                    self.count_call("chat", "ok");
                    self.count_usage(run, Some(&agent.name), &model, completion.usage);
                    run.reply.push_str(&text);
                    run.share(&agent.name).reply.push_str(&text);
                    return Ok((text, completion));
                }
                Err(Stop::Model {
                    error,
                    emitted: false,
                }) if error.is_transient() => match delays.next() {
                    Some(delay) => {
                        self.count_call("chat", "retried");
                        tracing::warn!(%error, agent = %agent.name, "A model call failed; retrying.");
                        run.event(TimelineEvent::ModelRetry {
                            agent: agent.name.clone(),
                            error: error.to_string(),
                            at: Utc::now(),
                        });
                        let cancel = run.turn.cancel;
                        tokio::select! {
                            () = tokio::time::sleep(pause(&error, delay)) => {}
                            () = cancel.cancelled() => return Err(Stop::Cancelled),
                        }
                    }
                    None => {
                        self.count_call("chat", "failed");
                        return Err(Stop::Model {
                            error,
                            emitted: false,
                        });
                    }
                },
                Err(Stop::Model { error, emitted }) => {
                    self.count_call("chat", "failed");
                    return Err(Stop::Model { error, emitted });
                }
                Err(Stop::Cancelled) => {
                    // What went out is the turn's partial reply; the stopped call's streamed
                    // tokens are counted as its completion (its prompt's size is not known).
                    self.count_call("chat", "cancelled");
                    let streamed = TokenUsage {
                        prompt_tokens: 0,
                        completion_tokens: pieces_of(&text),
                    };
                    self.count_usage(run, Some(&agent.name), &model, streamed);
                    run.reply.push_str(&text);
                    run.share(&agent.name).reply.push_str(&text);
                    return Err(Stop::Cancelled);
                }
                Err(stop) => return Err(stop),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_step(
        &self,
        out: &mut impl FrameSink,
        model: &str,
        agent: &Agent,
        run: &Run<'_>,
        tools: &[crate::llm::ToolDefinition],
        text: &mut String,
        emitted: &mut bool,
    ) -> Result<Completion, Stop> {
        let request = ChatRequest {
            model,
            agent: &agent.name,
            messages: &run.state.messages,
            tools,
        };
        let started = std::time::Instant::now();
        let mut stream = self
            .model
            .chat(request)
            .await
            .map_err(|error| Stop::Model {
                error,
                emitted: false,
            })?;
        loop {
            // Frames that are ready go out before waiting for the model's next chunk.
            let next = match stream.next().now_or_never() {
                Some(next) => next,
                None => {
                    out.flush().await?;
                    tokio::select! {
                        next = stream.next() => next,
                        () = run.turn.cancel.cancelled() => return Err(Stop::Cancelled),
                    }
                }
            };
            // Not one more token of a cancelled turn.
            check(run.turn.cancel)?;
            match next {
                Some(Ok(ChatEvent::Text(piece))) => {
                    if piece.is_empty() {
                        continue;
                    }
                    if !*emitted {
                        self.metrics
                            .model_first_token_seconds
                            .with_label_values(&[model])
                            .observe(started.elapsed().as_secs_f64());
                    }
                    *emitted = true;
                    text.push_str(&piece);
                    out.send(FrameBody::Token {
                        agent: agent.name.clone(),
                        content: piece,
                    })
                    .await?;
                }
                Some(Ok(ChatEvent::Done(completion))) => return Ok(completion),
                Some(Err(error)) => {
                    return Err(Stop::Model {
                        error,
                        emitted: *emitted,
                    })
                }
                None => {
                    return Err(Stop::Model {
                        error: LlmError::transient(
                            "the model's stream ended before its answer did",
                        ),
                        emitted: *emitted,
                    })
                }
            }
        }
    }

    /// Counts a model call by kind (`classify`, `chat`) and result (`ok`, `retried`, `failed`).
    fn count_call(&self, kind: &str, result: &str) {
        self.metrics
            .model_calls
            .with_label_values(&[kind, result])
            .inc();
    }

    /// Observes how long a model call attempt took.
    fn time_call(&self, model: &str, kind: &str, started: std::time::Instant) {
        self.metrics
            .model_call_seconds
            .with_label_values(&[model, kind])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Adds a call's usage to the segment, and to `agent`'s share (the classifier has none).
    fn count_usage(&self, run: &mut Run<'_>, agent: Option<&str>, model: &str, usage: TokenUsage) {
        let cost = self.config.cost(model, usage);
        self.metrics
            .count_usage(model, agent.unwrap_or("classifier"), usage, cost);
        run.usage.prompt_tokens += usage.prompt_tokens;
        run.usage.completion_tokens += usage.completion_tokens;
        run.usage.cost_usd += cost;
        if let Some(agent) = agent {
            let share = run.share(agent);
            share.usage.prompt_tokens += usage.prompt_tokens;
            share.usage.completion_tokens += usage.completion_tokens;
            share.usage.cost_usd += cost;
        }
    }
}

/// `Err(Stop::Cancelled)` once the turn is cancelled.
fn check(cancel: &tokio_util::sync::CancellationToken) -> Result<(), Stop> {
    if cancel.is_cancelled() {
        Err(Stop::Cancelled)
    } else {
        Ok(())
    }
}

/// The completion tokens of a stopped stream, estimated from its text (about four characters a
/// token, as OpenAI's tokenizers average on English), at least one if anything was streamed.
fn pieces_of(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    if chars == 0 {
        0
    } else {
        chars.div_ceil(4).max(1)
    }
}

/// A tool handed the conversation to a human: every socket of the thread learns that it now
/// waits for one (SPEC §7), once per segment. (The agents run only in the `ai` state.)
async fn announce_escalation(
    out: &mut impl FrameSink,
    run: &Run<'_>,
    escalated: bool,
) -> Result<(), TurnError> {
    if escalated && !run.escalated {
        out.send(FrameBody::Handoff {
            state: shared::protocol::HandoffState::Waiting,
            operator: None,
            resolved: false,
        })
        .await?;
    }
    Ok(())
}

/// Puts a tool call and its result on the timeline and in the agent's share; a tool that hands
/// the conversation to a human marks the segment escalated when it succeeds.
fn record_call(
    run: &mut Run<'_>,
    agent: &str,
    tool: &str,
    args: Value,
    ok: bool,
    result: &Value,
    escalates: bool,
) {
    run.event(TimelineEvent::ToolCall {
        agent: agent.to_owned(),
        tool: tool.to_owned(),
        args,
        at: Utc::now(),
    });
    run.event(TimelineEvent::ToolResult {
        agent: agent.to_owned(),
        tool: tool.to_owned(),
        ok,
        result: result.clone(),
        at: Utc::now(),
    });
    run.share(agent).tool_calls += 1;
    if escalates && ok {
        run.escalated = true;
        let reason = result["reason"].as_str().unwrap_or_default().to_owned();
        run.event(TimelineEvent::Escalation {
            agent: agent.to_owned(),
            reason,
            at: Utc::now(),
        });
    }
}

/// How long to wait before the next try: the server's `Retry-After` when it sent one.
fn pause(error: &LlmError, backoff: Duration) -> Duration {
    error
        .retry_after()
        .map_or(backoff, |after| after.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::llm::ScriptedModel;
    use crate::tools::http::HostAllowList;

    /// The frames a segment sent, in order: a sink with no NATS behind it.
    #[derive(Default)]
    struct Recorded {
        frames: Vec<FrameBody>,
    }

    impl FrameSink for Recorded {
        async fn send(&mut self, body: FrameBody) -> Result<(), TurnError> {
            self.frames.push(body);
            Ok(())
        }

        async fn flush(&mut self) -> Result<(), TurnError> {
            Ok(())
        }
    }

    /// The demo agents on the scripted model. The store's pool never connects: a turn that
    /// calls no tool and raises no approval does not touch the database.
    fn graph() -> Graph {
        let toolbox = Toolbox::demo().unwrap();
        let config = AgentsConfig::load(None, &toolbox).unwrap();
        let db = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let minute = Duration::from_secs(60);
        Graph {
            config: Arc::new(config),
            toolbox: Arc::new(toolbox),
            model: Arc::new(ScriptedModel {
                reply_tokens: 5,
                token_delay: Duration::ZERO,
                fail_on: None,
                panic_on: None,
            }),
            store: Store::new(db.clone(), db, Uuid::nil(), minute, minute, minute),
            interrupt_ttl: minute,
            metrics: WorkerMetrics::new().unwrap(),
            http: Arc::new(HttpSettings {
                timeout: minute,
                max_response_bytes: 1024,
                allow: HostAllowList::parse(""),
            }),
        }
    }

    fn turn(cancel: &CancellationToken) -> TurnInfo<'_> {
        TurnInfo {
            thread_id: "t",
            turn_id: Uuid::nil(),
            in_seq: 1,
            cancel,
        }
    }

    #[tokio::test]
    async fn a_message_streams_its_reply_then_completes_without_nats() {
        let cancel = CancellationToken::new();
        let mut out = Recorded::default();
        let ended = graph()
            .run_message(&mut out, turn(&cancel), "Hello there", Vec::new())
            .await
            .unwrap();
        assert_eq!(ended.outcome, Outcome::Completed);
        let tokens: String = out
            .frames
            .iter()
            .filter_map(|frame| match frame {
                FrameBody::Token { content, .. } => Some(content.as_str()),
                _ => None,
            })
            .collect();
        assert!(!tokens.is_empty());
        assert_eq!(tokens, ended.reply);
        // The timeline: the classification, then the agent's reply, each with its time, in the
        // JSON `turns.events` stores.
        let stored = TimelineEvent::to_stored(&ended.events);
        let kinds: Vec<_> = ended.events.iter().map(TimelineEvent::kind).collect();
        assert_eq!(
            kinds,
            [Some("classification"), Some("agent_reply")],
            "{stored}"
        );
        assert!(stored[0]["result"]["intents"].is_array(), "{stored}");
        assert_eq!(stored[1]["content"], ended.reply.as_str());
        assert!(stored
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["at"].is_string()));
        assert!(
            matches!(
                out.frames.last(),
                Some(FrameBody::MessageComplete {
                    cancelled: false,
                    ..
                })
            ),
            "{:?}",
            out.frames
        );
    }

    #[tokio::test]
    async fn a_turn_cancelled_before_it_runs_only_completes_cancelled() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut out = Recorded::default();
        let ended = graph()
            .run_message(&mut out, turn(&cancel), "Hello there", Vec::new())
            .await
            .unwrap();
        assert_eq!(ended.outcome, Outcome::Cancelled);
        assert!(
            matches!(
                out.frames.as_slice(),
                [FrameBody::MessageComplete {
                    cancelled: true,
                    ..
                }]
            ),
            "{:?}",
            out.frames
        );
        // The timeline ends with `cancelled` (the classifier may have answered first).
        let stored = TimelineEvent::to_stored(&ended.events);
        let last = stored.as_array().and_then(|events| events.last());
        assert_eq!(last.map(|event| &event["type"]), Some(&json!("cancelled")));
        assert!(
            last.is_some_and(|event| event["at"].is_string()),
            "{stored}"
        );
    }
}

//! The turn's state machine, rule by rule, with no NATS and no PostgreSQL: what a stored message
//! asks of its thread ([`super::plan`]), what it decides about the approval the thread waits for,
//! the frames that close a turn ([`super::end`]), where the thread stands afterwards, what an
//! earlier attempt left on the reply subject ([`super::recover`]) and which messages stop the
//! turns in progress. Approvals are read from an in-memory fake of [`Approvals`]; frames are
//! recorded by a [`FrameSink`] that only keeps them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use serde_json::{json, Value};
use shared::ids::{ThreadId, TurnId};
use shared::protocol::bus::{CancelNotice, InboundKind, InboundMessage};
use shared::protocol::{FrameBody, HandoffState, Usage};
use shared::turns::{InterruptId, InterruptStatus, TurnOutcome};
use uuid::Uuid;

use super::end::{segment_usage, Closing, Settled};
use super::plan::{approval_open_to, plan, Approvals, Plan};
use super::recover::{earlier_attempt, numbered_after, Earlier};
use super::run::cancel_withdraws;
use crate::agents::{AgentsConfig, FrameSink, Graph, TurnInfo};
use crate::cancels::{stops_earlier_turns, Cancels, DoubleText};
use crate::error::TurnError;
use crate::llm::ScriptedModel;
use crate::metrics::WorkerMetrics;
use crate::publish::{LastFrame, Tail};
use crate::records::{Checkpoint, Decision, Lease, Outcome, PendingInterrupt, ThreadStatus};
use crate::store::Store;
use crate::tools::http::{HostAllowList, HttpSettings};
use crate::tools::Toolbox;

// ---------------------------------------------------------------------------------------------
// Fakes and builders
// ---------------------------------------------------------------------------------------------

/// The frames a turn sent, in order, and how often it flushed: a sink with no NATS behind it.
#[derive(Default)]
struct Recorded {
    frames: Vec<FrameBody>,
    flushes: usize,
}

impl FrameSink for Recorded {
    async fn send(&mut self, body: FrameBody) -> Result<(), TurnError> {
        self.frames.push(body);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), TurnError> {
        self.flushes += 1;
        Ok(())
    }
}

impl Recorded {
    /// The frames as clients read them.
    fn wire(&self) -> Vec<Value> {
        wire(&self.frames)
    }
}

fn wire(frames: &[FrameBody]) -> Vec<Value> {
    frames
        .iter()
        .map(|frame| serde_json::to_value(frame).unwrap())
        .collect()
}

/// The approvals table, in memory, counting its reads.
#[derive(Default)]
struct FakeApprovals {
    raised: HashMap<InterruptId, DateTime<Utc>>,
    stored: HashMap<InterruptId, PendingInterrupt>,
    reads: AtomicUsize,
}

impl FakeApprovals {
    fn with(pending: PendingInterrupt, raised_at: DateTime<Utc>) -> Self {
        let mut approvals = Self::default();
        approvals.raised.insert(pending.id, raised_at);
        approvals.stored.insert(pending.id, pending);
        approvals
    }
}

impl Approvals for FakeApprovals {
    async fn raised_at(&self, id: InterruptId) -> Result<Option<DateTime<Utc>>, TurnError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.raised.get(&id).copied())
    }

    async fn load(&self, id: InterruptId) -> Result<Option<PendingInterrupt>, TurnError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.stored.get(&id).cloned())
    }
}

/// Minutes after a fixed instant.
fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap() + chrono::Duration::minutes(minutes)
}

fn lease(pending_interrupt: Option<InterruptId>) -> Lease {
    Lease {
        thread_id: ThreadId::parse("t").unwrap(),
        epoch: 1,
        last_in_seq: 4,
        last_seq: 10,
        expired: false,
        last_active_at: at(0),
        pending_interrupt,
        handoff: HandoffState::Ai,
        history: None,
    }
}

/// A stored message of `kind` (its JSON fields), received at `received_at`.
fn message(kind: Value, received_at: DateTime<Utc>) -> InboundMessage {
    let mut value = json!({
        "thread_id": "t",
        "message_id": "m-1",
        "turn_id": Uuid::new_v4(),
        "received_at": received_at,
    });
    if let (Some(value), Some(kind)) = (value.as_object_mut(), kind.as_object()) {
        value.extend(kind.clone());
    }
    serde_json::from_value(value).unwrap()
}

fn customer_message(received_at: DateTime<Utc>) -> InboundMessage {
    message(json!({"type": "message", "content": "Hello"}), received_at)
}

fn answer(approved: bool, id: Option<InterruptId>, received_at: DateTime<Utc>) -> InboundMessage {
    let mut kind = json!({"type": "interrupt_response", "approved": approved});
    if let Some(id) = id {
        kind["interrupt_id"] = json!(id.to_string());
    }
    message(kind, received_at)
}

/// An approval of a paused turn that spent `usage`, raised at minute 1, expiring at minute 11.
fn pending(usage: Usage) -> PendingInterrupt {
    PendingInterrupt {
        id: InterruptId::generate(),
        turn_id: Uuid::new_v4(),
        agent: "billing".into(),
        action: "refund".into(),
        params: json!({"order_id": "A-1"}),
        checkpoint: Checkpoint {
            usage,
            ..Checkpoint::default()
        },
        expires_at: at(11),
        status: InterruptStatus::Pending,
        decided_in_seq: None,
    }
}

fn usage(prompt_tokens: u64, completion_tokens: u64, cost_usd: f64) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens,
        cost_usd,
    }
}

const IN_SEQ: u64 = 5;

fn last_frame(seq: u64, kind: &str) -> LastFrame {
    LastFrame {
        seq,
        turn_id: TurnId::generate(),
        kind: kind.into(),
        usage: None,
        code: None,
        interrupt_id: None,
        cancelled: false,
    }
}

fn tail(frame: Option<LastFrame>) -> Tail {
    Tail {
        stream_seq: Some(42),
        frame,
    }
}

// ---------------------------------------------------------------------------------------------
// Plan: what a stored message asks of its thread
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_customer_message_starts_a_turn_of_its_own() {
    let message = customer_message(at(1));
    let plan = plan(
        &FakeApprovals::default(),
        false,
        &lease(None),
        &message,
        IN_SEQ,
    )
    .await
    .unwrap();
    assert!(
        matches!(&plan, Plan::Message { content, supersedes: None } if content.as_str() == "Hello"),
        "{plan:?}"
    );
    assert_eq!(plan.turn_id(message.turn_id), message.turn_id);
    assert!(plan.cancellable());
    assert_eq!(plan.decides(), None);
    assert_eq!(plan.pending_after(&lease(None)), None);
    assert_eq!(plan.usage_before(), Usage::default());
}

#[tokio::test]
async fn a_message_while_a_turn_is_paused_withdraws_its_approval() {
    let paused = pending(usage(7, 3, 0.01));
    let lease = lease(Some(paused.id));
    let approvals = FakeApprovals::with(paused.clone(), at(1));
    let message = customer_message(at(2));
    let plan = plan(&approvals, false, &lease, &message, IN_SEQ)
        .await
        .unwrap();
    assert!(
        matches!(plan, Plan::Message { supersedes: Some(id), .. } if id == paused.id),
        "{plan:?}"
    );
    // Superseded before anything of the new turn runs; the thread no longer waits for it, and
    // the new message's turn is its own (not the paused one's).
    assert_eq!(
        plan.decides(),
        Some((paused.id, InterruptStatus::Superseded))
    );
    assert_eq!(plan.pending_after(&lease), None);
    assert_eq!(plan.turn_id(message.turn_id), message.turn_id);
    assert_eq!(
        approvals.reads.load(Ordering::SeqCst),
        0,
        "no approval is read"
    );
}

#[tokio::test]
async fn an_expired_session_answers_every_message_with_session_expired() {
    let paused = pending(Usage::default());
    let lease = lease(Some(paused.id));
    for message in [
        customer_message(at(1)),
        answer(true, Some(paused.id), at(1)),
    ] {
        let plan = plan(&FakeApprovals::default(), true, &lease, &message, IN_SEQ)
            .await
            .unwrap();
        assert!(matches!(plan, Plan::SessionExpired), "{plan:?}");
        assert!(!plan.cancellable());
        assert_eq!(plan.decides(), None);
        // The approval it was waiting for is left as it was.
        assert_eq!(plan.pending_after(&lease), Some(paused.id));
    }
}

#[tokio::test]
async fn a_session_expires_after_its_idle_time_extended_by_a_pending_approval() {
    let db = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let minutes = |n: u64| Duration::from_secs(60 * n);
    // Sessions idle out after 30 minutes; an approval waits 10 more.
    let store = Store::new(
        db.clone(),
        db,
        Uuid::nil(),
        minutes(1),
        minutes(30),
        minutes(10),
    );
    assert!(!store.session_expired(&lease(None), at(30)));
    assert!(store.session_expired(&lease(None), at(31)));
    let waiting = lease(Some(InterruptId::generate()));
    assert!(!store.session_expired(&waiting, at(40)));
    assert!(store.session_expired(&waiting, at(41)));
    let closed = Lease {
        expired: true,
        ..lease(None)
    };
    assert!(
        store.session_expired(&closed, at(0)),
        "an expired thread stays expired"
    );
}

#[tokio::test]
async fn a_cancel_and_the_handoff_messages_are_not_planned_as_turns() {
    for kind in [
        json!({"type": "cancel"}),
        json!({"type": "request_human"}),
        json!({"type": "operator_join", "operator": {"id": Uuid::new_v4(), "name": "Olga"}}),
    ] {
        let message = message(kind.clone(), at(1));
        let planned = plan(
            &FakeApprovals::default(),
            false,
            &lease(None),
            &message,
            IN_SEQ,
        )
        .await;
        assert!(planned.is_err(), "{kind}: {planned:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Approvals: answered, rejected, expired, or answered when nothing waits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_approval_answered_in_time_resumes_the_paused_turn() {
    let paused = pending(usage(7, 3, 0.01));
    let lease = lease(Some(paused.id));
    let approvals = FakeApprovals::with(paused.clone(), at(1));
    let message = answer(true, Some(paused.id), at(2));
    let plan = plan(&approvals, false, &lease, &message, IN_SEQ)
        .await
        .unwrap();
    assert!(
        matches!(&plan, Plan::Resume(resumed, Decision::Approved) if resumed.id == paused.id),
        "{plan:?}"
    );
    // Its frames continue the paused turn, whose usage so far it carries on from.
    assert_eq!(plan.turn_id(message.turn_id), TurnId::from(paused.turn_id));
    assert_eq!(plan.usage_before(), usage(7, 3, 0.01));
    assert_eq!(plan.decides(), Some((paused.id, InterruptStatus::Approved)));
    assert!(plan.cancellable());
    assert_eq!(plan.pending_after(&lease), None);
}

#[tokio::test]
async fn a_rejected_approval_resumes_the_paused_turn_as_rejected() {
    let paused = pending(Usage::default());
    let approvals = FakeApprovals::with(paused.clone(), at(1));
    let message = answer(false, Some(paused.id), at(2));
    let plan = plan(&approvals, false, &lease(Some(paused.id)), &message, IN_SEQ)
        .await
        .unwrap();
    assert!(
        matches!(plan, Plan::Resume(_, Decision::Rejected)),
        "{plan:?}"
    );
    assert_eq!(plan.decides(), Some((paused.id, InterruptStatus::Rejected)));
}

#[tokio::test]
async fn an_answer_after_the_approval_expired_is_a_late_answer() {
    let paused = pending(usage(7, 3, 0.01));
    let lease = lease(Some(paused.id));
    let approvals = FakeApprovals::with(paused.clone(), at(1));
    // `expires_at` is minute 11: an answer received then is in time, one after it is late.
    let in_time = answer(true, Some(paused.id), at(11));
    let plan_in_time = plan(&approvals, false, &lease, &in_time, IN_SEQ)
        .await
        .unwrap();
    assert!(matches!(plan_in_time, Plan::Resume(..)), "{plan_in_time:?}");
    let late = answer(true, Some(paused.id), at(12));
    let plan = plan(&approvals, false, &lease, &late, IN_SEQ)
        .await
        .unwrap();
    assert!(matches!(plan, Plan::LateAnswer(_)), "{plan:?}");
    // It ends the paused turn (nothing runs, so it cannot be cancelled) and the approval is
    // expired; the thread waits for nothing.
    assert_eq!(plan.turn_id(late.turn_id), TurnId::from(paused.turn_id));
    assert!(!plan.cancellable());
    assert_eq!(plan.decides(), Some((paused.id, InterruptStatus::Expired)));
    assert_eq!(plan.pending_after(&lease), None);
    assert_eq!(plan.usage_before(), usage(7, 3, 0.01));
}

#[tokio::test]
async fn an_answer_when_no_approval_waits_has_no_pending_interrupt() {
    let message = answer(true, None, at(2));
    let plan = plan(
        &FakeApprovals::default(),
        false,
        &lease(None),
        &message,
        IN_SEQ,
    )
    .await
    .unwrap();
    assert!(matches!(plan, Plan::NoPendingInterrupt), "{plan:?}");
    assert_eq!(plan.turn_id(message.turn_id), message.turn_id);
    assert!(!plan.cancellable());
    assert_eq!(plan.decides(), None);
}

#[tokio::test]
async fn an_answer_naming_another_approval_has_no_pending_interrupt() {
    let paused = pending(Usage::default());
    let lease = lease(Some(paused.id));
    let approvals = FakeApprovals::with(paused.clone(), at(1));
    let message = answer(true, Some(InterruptId::generate()), at(2));
    let plan = plan(&approvals, false, &lease, &message, IN_SEQ)
        .await
        .unwrap();
    assert!(matches!(plan, Plan::NoPendingInterrupt), "{plan:?}");
    // The approval still waits.
    assert_eq!(plan.pending_after(&lease), Some(paused.id));
}

#[tokio::test]
async fn an_answer_without_an_id_is_for_an_approval_raised_before_it_arrived() {
    let paused = pending(Usage::default());
    let lease = lease(Some(paused.id));
    let approvals = FakeApprovals::with(paused.clone(), at(1));
    let after = answer(true, None, at(2));
    let planned = plan(&approvals, false, &lease, &after, IN_SEQ)
        .await
        .unwrap();
    assert!(matches!(planned, Plan::Resume(..)), "{planned:?}");
    // An answer the edge accepted before the approval was raised (or at the same instant) was
    // not meant for it.
    for received_at in [at(0), at(1)] {
        let before = answer(true, None, received_at);
        let planned = plan(&approvals, false, &lease, &before, IN_SEQ)
            .await
            .unwrap();
        assert!(matches!(planned, Plan::NoPendingInterrupt), "{planned:?}");
    }
}

#[tokio::test]
async fn an_answer_to_an_approval_gone_from_the_store_has_no_pending_interrupt() {
    let id = InterruptId::generate();
    let message = answer(true, Some(id), at(2));
    let plan = plan(
        &FakeApprovals::default(),
        false,
        &lease(Some(id)),
        &message,
        IN_SEQ,
    )
    .await
    .unwrap();
    assert!(matches!(plan, Plan::NoPendingInterrupt), "{plan:?}");
}

#[tokio::test]
async fn an_approval_decided_by_another_message_cannot_be_answered_again() {
    let decided = PendingInterrupt {
        status: InterruptStatus::Approved,
        decided_in_seq: Some(IN_SEQ - 1),
        ..pending(Usage::default())
    };
    let approvals = FakeApprovals::with(decided.clone(), at(1));
    let message = answer(true, Some(decided.id), at(2));
    let plan = plan(
        &approvals,
        false,
        &lease(Some(decided.id)),
        &message,
        IN_SEQ,
    )
    .await
    .unwrap();
    assert!(matches!(plan, Plan::NoPendingInterrupt), "{plan:?}");
    assert!(!approval_open_to(&decided, IN_SEQ));
}

#[tokio::test]
async fn the_message_that_decided_an_approval_goes_on_with_it_when_retried() {
    let decided = PendingInterrupt {
        status: InterruptStatus::Approved,
        decided_in_seq: Some(IN_SEQ),
        ..pending(Usage::default())
    };
    let approvals = FakeApprovals::with(decided.clone(), at(1));
    let message = answer(true, Some(decided.id), at(2));
    let plan = plan(
        &approvals,
        false,
        &lease(Some(decided.id)),
        &message,
        IN_SEQ,
    )
    .await
    .unwrap();
    assert!(matches!(plan, Plan::Resume(..)), "{plan:?}");
    assert!(approval_open_to(&decided, IN_SEQ));
    assert!(approval_open_to(&pending(Usage::default()), IN_SEQ));
}

#[test]
fn a_turn_that_raises_an_approval_leaves_the_thread_awaiting_it() {
    let raised = InterruptId::generate();
    let settled = Settled::after_run(&Outcome::Interrupted(raised), false, None);
    assert_eq!(
        settled,
        Settled {
            pending_interrupt: Some(raised),
            status: ThreadStatus::AwaitingApproval,
            outcome: TurnOutcome::Interrupted,
        }
    );
}

#[test]
fn a_turn_that_ends_resolves_the_thread_unless_an_approval_still_waits() {
    for (ended, outcome) in [
        (Outcome::Completed, TurnOutcome::Completed),
        (Outcome::Clarification, TurnOutcome::Clarification),
        (Outcome::Cancelled, TurnOutcome::Cancelled),
    ] {
        let settled = Settled::after_run(&ended, false, None);
        assert_eq!(settled.status, ThreadStatus::Resolved);
        assert_eq!(settled.outcome, outcome);
        assert_eq!(settled.pending_interrupt, None);
    }
    // An answer that found no approval to answer leaves the one that waits waiting.
    let waiting = InterruptId::generate();
    let settled = Settled::after_run(&Outcome::Completed, false, Some(waiting));
    assert_eq!(settled.status, ThreadStatus::AwaitingApproval);
    assert_eq!(settled.pending_interrupt, Some(waiting));
    assert_eq!(settled.outcome, TurnOutcome::Completed);
}

#[test]
fn an_expired_session_expires_the_thread() {
    let waiting = InterruptId::generate();
    let settled = Settled::after_run(&Outcome::Completed, true, Some(waiting));
    assert_eq!(settled.status, ThreadStatus::Expired);
    assert_eq!(settled.outcome, TurnOutcome::SessionExpired);
    assert_eq!(settled.pending_interrupt, Some(waiting));
}

// ---------------------------------------------------------------------------------------------
// The frames that close a turn (clients and `resume` read these: exact fields, exact order)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_expired_session_is_answered_by_one_error_and_no_message_complete() {
    let mut out = Recorded::default();
    Closing::SessionExpired.send(&mut out).await.unwrap();
    assert_eq!(
        out.wire(),
        [
            json!({"type": "error", "code": "session_expired", "retryable": false,
                "message": "This conversation has expired; please start a new one."})
        ]
    );
    assert_eq!(out.flushes, 0, "the caller flushes");
}

#[tokio::test]
async fn an_answer_with_nothing_to_answer_gets_an_error_then_message_complete() {
    let mut out = Recorded::default();
    Closing::NoPendingInterrupt.send(&mut out).await.unwrap();
    assert_eq!(
        out.wire(),
        [
            json!({"type": "error", "code": "no_pending_interrupt", "retryable": false,
                   "message": "There is no pending approval on this thread."}),
            json!({"type": "message_complete",
                   "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}}),
        ]
    );
}

#[tokio::test]
async fn a_late_answer_gets_interrupt_expired_then_the_paused_turns_usage() {
    let paused = pending(usage(7, 3, 0.5));
    let mut out = Recorded::default();
    Closing::LateAnswer(&paused).send(&mut out).await.unwrap();
    assert_eq!(
        out.wire(),
        [
            json!({"type": "interrupt_expired", "interrupt_id": paused.id.to_string(),
                   "action": "refund",
                   "message": "This approval (refund) expired before your answer arrived, so nothing was done. Ask again if you still want it."}),
            json!({"type": "message_complete",
                   "usage": {"prompt_tokens": 7, "completion_tokens": 3, "cost_usd": 0.5}}),
        ]
    );
}

#[tokio::test]
async fn a_message_held_for_a_human_completes_with_no_usage() {
    let mut out = Recorded::default();
    Closing::HeldForHuman.send(&mut out).await.unwrap();
    assert_eq!(
        out.wire(),
        [json!({"type": "message_complete",
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}})]
    );
}

#[tokio::test]
async fn a_cancelled_or_withdrawn_turn_completes_cancelled_with_its_usage_so_far() {
    let mut out = Recorded::default();
    Closing::Cancelled(usage(7, 3, 0.5))
        .send(&mut out)
        .await
        .unwrap();
    assert_eq!(
        out.wire(),
        [json!({"type": "message_complete", "cancelled": true,
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "cost_usd": 0.5}})]
    );
}

#[tokio::test]
async fn a_message_given_up_on_gets_processing_failed_after_a_reset_of_what_it_sent() {
    let failed = json!({"type": "error", "code": "processing_failed", "retryable": false,
        "message": "We could not process this message. It has been set aside, and an operator can replay it."});
    let mut out = Recorded::default();
    Closing::GivenUp { reset: false }
        .send(&mut out)
        .await
        .unwrap();
    assert_eq!(out.wire(), std::slice::from_ref(&failed));
    let mut out = Recorded::default();
    Closing::GivenUp { reset: true }
        .send(&mut out)
        .await
        .unwrap();
    assert_eq!(out.wire(), [json!({"type": "turn_reset"}), failed]);
}

// ---------------------------------------------------------------------------------------------
// Recovery: what an earlier attempt that did not commit left on the reply subject
// ---------------------------------------------------------------------------------------------

#[test]
fn frames_up_to_the_committed_position_are_no_earlier_attempt() {
    let lease = lease(None);
    assert!(matches!(
        earlier_attempt(&lease, &tail(None)),
        Earlier::Nothing
    ));
    let committed = tail(Some(last_frame(lease.last_seq, "message_complete")));
    assert!(matches!(
        earlier_attempt(&lease, &committed),
        Earlier::Nothing
    ));
}

#[test]
fn an_earlier_attempt_that_published_part_of_the_turn_runs_again_after_a_reset() {
    let lease = lease(None);
    for kind in ["token", "user_message", "tool_call", "turn_reset"] {
        let partial = tail(Some(last_frame(lease.last_seq + 3, kind)));
        assert!(
            matches!(earlier_attempt(&lease, &partial), Earlier::Partial),
            "{kind}"
        );
    }
}

#[test]
fn an_earlier_attempt_that_published_the_whole_turn_is_committed_not_run_again() {
    let lease = lease(None);
    for kind in ["message_complete", "error", "interrupt"] {
        let published = tail(Some(last_frame(lease.last_seq + 3, kind)));
        match earlier_attempt(&lease, &published) {
            Earlier::Published(end) => assert_eq!(end.seq, lease.last_seq + 3),
            other => panic!("{kind}: {other:?}"),
        }
    }
}

#[test]
fn a_turn_numbers_its_frames_after_the_last_published_seq() {
    let lease = lease(None);
    assert_eq!(numbered_after(&lease, &tail(None)), lease.last_seq);
    // An attempt that died went further than the commit: numbering resumes after it.
    let further = tail(Some(last_frame(lease.last_seq + 3, "token")));
    assert_eq!(numbered_after(&lease, &further), lease.last_seq + 3);
    // A stored frame older than the committed position never numbers backwards.
    let older = tail(Some(last_frame(lease.last_seq - 2, "token")));
    assert_eq!(numbered_after(&lease, &older), lease.last_seq);
}

#[test]
fn a_recovered_turn_ended_by_message_complete_is_completed() {
    let end = LastFrame {
        usage: Some(usage(10, 5, 0.2)),
        ..last_frame(13, "message_complete")
    };
    assert_eq!(
        Settled::from_published(&end, None, false),
        Settled {
            pending_interrupt: None,
            status: ThreadStatus::Resolved,
            outcome: TurnOutcome::Completed,
        }
    );
    assert_eq!(
        Settled::from_published(&end, None, true).outcome,
        TurnOutcome::Clarification
    );
}

#[test]
fn a_recovered_turn_that_raised_an_approval_waits_for_it() {
    let raised = InterruptId::generate();
    let end = LastFrame {
        interrupt_id: Some(raised.to_string()),
        ..last_frame(13, "interrupt")
    };
    assert_eq!(
        Settled::from_published(&end, None, false),
        Settled {
            pending_interrupt: Some(raised),
            status: ThreadStatus::AwaitingApproval,
            outcome: TurnOutcome::Interrupted,
        }
    );
}

#[test]
fn a_recovered_turn_that_was_cancelled_is_cancelled() {
    let end = LastFrame {
        cancelled: true,
        ..last_frame(13, "message_complete")
    };
    let settled = Settled::from_published(&end, None, false);
    assert_eq!(settled.outcome, TurnOutcome::Cancelled);
    assert_eq!(settled.status, ThreadStatus::Resolved);
}

#[test]
fn a_recovered_session_expired_error_expires_the_thread() {
    let end = LastFrame {
        code: Some("session_expired".into()),
        ..last_frame(13, "error")
    };
    let settled = Settled::from_published(&end, None, false);
    assert_eq!(settled.status, ThreadStatus::Expired);
    assert_eq!(settled.outcome, TurnOutcome::SessionExpired);
}

#[test]
fn a_recovered_no_pending_interrupt_leaves_the_approval_waiting() {
    let waiting = InterruptId::generate();
    let end = last_frame(13, "message_complete");
    let settled = Settled::from_published(&end, Some(waiting), false);
    assert_eq!(settled.pending_interrupt, Some(waiting));
    assert_eq!(settled.status, ThreadStatus::AwaitingApproval);
    assert_eq!(settled.outcome, TurnOutcome::Completed);
}

#[test]
fn a_recovered_segment_records_its_own_usage_not_the_turns_total() {
    // An answer's `message_complete` says the whole turn's usage; the paused part was counted
    // by the turn that raised the approval.
    assert_eq!(
        segment_usage(usage(10, 5, 0.75), usage(7, 3, 0.25)),
        usage(3, 2, 0.5)
    );
    // Never below zero, whatever the frames say.
    assert_eq!(
        segment_usage(usage(1, 1, 0.1), usage(7, 3, 0.25)),
        usage(0, 0, 0.0)
    );
}

// ---------------------------------------------------------------------------------------------
// Cancels and double texts
// ---------------------------------------------------------------------------------------------

#[test]
fn a_cancel_withdraws_the_paused_turn_it_names_or_any_when_it_names_none() {
    let paused = pending(Usage::default());
    assert!(cancel_withdraws(None, &paused));
    assert!(cancel_withdraws(
        Some(TurnId::from(paused.turn_id)),
        &paused
    ));
    assert!(!cancel_withdraws(Some(TurnId::generate()), &paused));
}

#[test]
fn a_cancel_stops_earlier_turns_whatever_double_text_says() {
    let named = TurnId::generate();
    for double_text in [DoubleText::Enqueue, DoubleText::Interrupt] {
        assert_eq!(
            stops_earlier_turns(&InboundKind::Cancel { turn_id: None }, double_text),
            Some(None)
        );
        assert_eq!(
            stops_earlier_turns(
                &InboundKind::Cancel {
                    turn_id: Some(named)
                },
                double_text
            ),
            Some(Some(named))
        );
    }
}

#[test]
fn a_double_text_is_queued_by_default_and_interrupts_only_when_configured() {
    let kind = customer_message(at(1)).kind;
    assert_eq!(stops_earlier_turns(&kind, DoubleText::Enqueue), None);
    assert_eq!(
        stops_earlier_turns(&kind, DoubleText::Interrupt),
        Some(None)
    );
    // Answers and handoff messages never stop a turn.
    for kind in [answer(true, None, at(1)).kind, InboundKind::RequestHuman] {
        assert_eq!(stops_earlier_turns(&kind, DoubleText::Interrupt), None);
    }
}

#[test]
fn a_turn_cancelled_before_it_ran_still_decides_its_approval() {
    let paused = pending(Usage::default());
    // A new message still withdraws the approval it supersedes.
    let message = Plan::Message {
        content: shared::protocol::frames::UserText::parse("Hi".into()).unwrap(),
        supersedes: Some(paused.id),
    };
    assert_eq!(
        message.decides_when_cancelled(),
        Some((paused.id, InterruptStatus::Superseded))
    );
    // An answer that never ran leaves its approval cancelled, approved or not.
    for decision in [Decision::Approved, Decision::Rejected] {
        let resume = Plan::Resume(Box::new(paused.clone()), decision);
        assert_eq!(
            resume.decides_when_cancelled(),
            Some((paused.id, InterruptStatus::Cancelled))
        );
    }
    let fresh = Plan::Message {
        content: shared::protocol::frames::UserText::parse("Hi".into()).unwrap(),
        supersedes: None,
    };
    assert_eq!(fresh.decides_when_cancelled(), None);
}

/// The demo agents on a scripted model that streams `reply_tokens` tokens a second apart. The
/// store's pool never connects: a plain message calls no tool and raises no approval.
fn slow_graph(reply_tokens: u32) -> Graph {
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
            reply_tokens,
            token_delay: Duration::from_secs(1),
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

fn notice(before_seq: u64) -> CancelNotice {
    CancelNotice {
        thread_id: ThreadId::parse("t").unwrap(),
        before_seq,
        turn_id: None,
        erased: false,
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancel_heard_while_a_turn_streams_ends_it_cancelled_at_the_next_chunk() {
    let cancels = Cancels::default();
    let thread = ThreadId::parse("t").unwrap();
    let guard = cancels.enter(&thread, IN_SEQ, TurnId::generate());
    let info = TurnInfo {
        thread_id: "t",
        turn_id: Uuid::nil(),
        in_seq: IN_SEQ,
        cancel: guard.token(),
    };
    let graph = slow_graph(1_000);
    let mut out = Recorded::default();
    let run = graph.run_message(&mut out, info, "Hello there", Vec::new());
    // A newer customer message with `DOUBLE_TEXT=interrupt` is announced 5 s (of paused time)
    // into a reply that would take 1,000 s.
    let stop = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let kind = customer_message(at(1)).kind;
        if let Some(turn_id) = stops_earlier_turns(&kind, DoubleText::Interrupt) {
            cancels.note(CancelNotice {
                turn_id,
                ..notice(IN_SEQ + 1)
            });
        }
    };
    let started = tokio::time::Instant::now();
    let (ended, ()) = tokio::join!(run, stop);
    let ended = ended.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ended.outcome, Outcome::Cancelled);
    let tokens = out
        .frames
        .iter()
        .filter(|frame| matches!(frame, FrameBody::Token { .. }))
        .count();
    assert!((1..10).contains(&tokens), "{tokens} tokens went out");
    assert!(
        matches!(
            out.frames.last(),
            Some(FrameBody::MessageComplete {
                cancelled: true,
                ..
            })
        ),
        "{:?}",
        out.frames.last()
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_queued_behind_a_turn_does_not_stop_it() {
    let cancels = Cancels::default();
    let thread = ThreadId::parse("t").unwrap();
    let guard = cancels.enter(&thread, IN_SEQ, TurnId::generate());
    let info = TurnInfo {
        thread_id: "t",
        turn_id: Uuid::nil(),
        in_seq: IN_SEQ,
        cancel: guard.token(),
    };
    let graph = slow_graph(20);
    let mut out = Recorded::default();
    // `DOUBLE_TEXT=enqueue`: the newer message announces nothing, and the turn runs to its end.
    let kind = customer_message(at(1)).kind;
    assert_eq!(stops_earlier_turns(&kind, DoubleText::Enqueue), None);
    // A cancel stored before this turn's message does not stop it either.
    cancels.note(notice(IN_SEQ));
    let ended = graph
        .run_message(&mut out, info, "Hello there", Vec::new())
        .await
        .unwrap();
    assert_eq!(ended.outcome, Outcome::Completed);
    assert!(
        matches!(
            out.frames.last(),
            Some(FrameBody::MessageComplete {
                cancelled: false,
                ..
            })
        ),
        "{:?}",
        out.frames.last()
    );
}

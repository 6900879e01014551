//! NATS subject layout. No other module formats a subject, stream or consumer name.

use crate::ids::ThreadId;

/// Names derived from `NATS_PREFIX`, so several deployments or test runs can share one NATS.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream that stores client messages: `<PREFIX>_IN`.
    pub fn inbound_stream(&self) -> String {
        format!("{}_IN", self.prefix.to_uppercase())
    }

    /// Stream that retains reply frames for `resume`: `<PREFIX>_OUT`.
    pub fn replies_stream(&self) -> String {
        format!("{}_OUT", self.prefix.to_uppercase())
    }

    /// The durable pull consumer every worker shares: `<prefix>-workers`.
    pub fn workers_consumer(&self) -> String {
        format!("{}-workers", self.prefix)
    }

    /// Where the edge publishes a thread's client messages.
    pub fn inbound(&self, thread: &ThreadId) -> String {
        format!("{}.in.{thread}", self.prefix)
    }

    /// Where workers publish a thread's reply frames.
    pub fn replies(&self, thread: &ThreadId) -> String {
        format!("{}.out.{thread}", self.prefix)
    }

    /// Where `<PREFIX>_OUT` republishes each reply bundle once it is stored; edges relay from
    /// here, so a bundle the stream refused (a fenced-off attempt) never reaches a client.
    pub fn live(&self, thread: &ThreadId) -> String {
        format!("{}.live.{thread}", self.prefix)
    }

    /// Every thread's [`Subjects::live`]: what an edge with `LIVE_SUBSCRIPTION=edge` subscribes to.
    pub fn live_wildcard(&self) -> String {
        format!("{}.live.*", self.prefix)
    }

    /// The stream's republish destination for [`Subjects::live`].
    pub fn live_template(&self) -> String {
        format!("{}.live.{{{{wildcard(1)}}}}", self.prefix)
    }

    /// The thread id of a subject produced by [`Subjects::live`].
    pub fn thread_of_live(&self, subject: &str) -> Option<ThreadId> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".live.")?;
        ThreadId::parse(rest).ok()
    }

    /// Core NATS (not stored) subject of a thread's cancel notices (SPEC §8); every worker
    /// listens to [`Subjects::cancels_wildcard`].
    pub fn cancels(&self, thread: &ThreadId) -> String {
        format!("{}.cancel.{thread}", self.prefix)
    }

    pub fn cancels_wildcard(&self) -> String {
        format!("{}.cancel.*", self.prefix)
    }

    /// Core NATS subject on which an erasure is announced to every edge (payload: the thread id),
    /// so that its token stops working everywhere at once.
    pub fn erased(&self) -> String {
        format!("{}.erased", self.prefix)
    }

    pub fn inbound_wildcard(&self) -> String {
        format!("{}.in.*", self.prefix)
    }

    pub fn replies_wildcard(&self) -> String {
        format!("{}.out.*", self.prefix)
    }

    /// The `Nats-Msg-Id` of a client message: `<thread_id>:<message_id>` (SPEC §3).
    pub fn message_dedup_id(thread: &ThreadId, message_id: &crate::ids::MessageId) -> String {
        format!("{thread}:{message_id}")
    }

    /// The thread id of a subject produced by [`Subjects::replies`].
    pub fn thread_of_replies(&self, subject: &str) -> Option<ThreadId> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".out.")?;
        ThreadId::parse(rest).ok()
    }

    /// The thread id of a subject produced by [`Subjects::inbound`].
    pub fn thread_of_inbound(&self, subject: &str) -> Option<ThreadId> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".in.")?;
        ThreadId::parse(rest).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let subjects = Subjects::new("chat");
        let thread = ThreadId::parse("t1").unwrap();
        assert_eq!(subjects.inbound_stream(), "CHAT_IN");
        assert_eq!(subjects.replies_stream(), "CHAT_OUT");
        assert_eq!(subjects.workers_consumer(), "chat-workers");
        assert_eq!(subjects.inbound(&thread), "chat.in.t1");
        assert_eq!(subjects.replies(&thread), "chat.out.t1");
        assert_eq!(
            subjects.thread_of_inbound("chat.in.t1"),
            Some(thread.clone())
        );
        assert_eq!(subjects.thread_of_inbound("chat.out.t1"), None);
        assert_eq!(
            subjects.thread_of_replies("chat.out.t1"),
            Some(ThreadId::parse("t1").unwrap())
        );
        assert_eq!(subjects.thread_of_replies("chat.in.t1"), None);
        assert_eq!(subjects.live(&thread), "chat.live.t1");
        assert_eq!(subjects.live_template(), "chat.live.{{wildcard(1)}}");
        assert_eq!(subjects.live_wildcard(), "chat.live.*");
        assert_eq!(
            subjects.thread_of_live("chat.live.t1"),
            Some(thread.clone())
        );
    }
}

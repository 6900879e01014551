//! Reading a thread's retained reply bundles back from `<PREFIX>_OUT`, for `resume` on the edge and
//! crash recovery in the worker. Every read goes to the stream leader (a lagging replica could
//! hide a bundle), and the first bundle to read is found by binary search over stream sequences:
//! `O(log n)` requests to get there, then one per bundle, however long the thread's history.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, RawMessageErrorKind};

use crate::protocol::bus::bundle;

/// Why a read failed.
pub type ReadError = stream::RawMessageError;

/// Bundles of one subject, in stream order, up to the subject's tail when the reader was made.
pub struct BundleReader<'a> {
    stream: &'a stream::Stream,
    subject: String,
    next_from: u64,
    until: u64,
}

impl<'a> BundleReader<'a> {
    /// A reader of the bundles of `subject` that hold frames with `seq > after_seq`.
    pub async fn after(
        stream: &'a stream::Stream,
        subject: &str,
        after_seq: u64,
    ) -> Result<BundleReader<'a>, ReadError> {
        let mut reader = Self {
            stream,
            subject: subject.to_owned(),
            next_from: 1,
            until: 0,
        };
        let tail = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(tail) => tail,
            Err(error) if matches!(error.kind(), RawMessageErrorKind::NoMessageFound) => {
                return Ok(reader)
            }
            Err(error) => return Err(error),
        };
        if last_frame_seq(&tail).is_some_and(|last| last <= after_seq) {
            return Ok(reader); // the client has everything
        }
        reader.until = tail.sequence;
        if after_seq == 0 {
            return Ok(reader);
        }
        // The first stream position whose next bundle holds a frame past `after_seq`.
        let (mut low, mut high) = (1, tail.sequence);
        while low < high {
            let middle = low + (high - low) / 2;
            match reader.next_at(middle).await? {
                Some(found) if last_frame_seq(&found).is_some_and(|last| last <= after_seq) => {
                    low = found.sequence + 1;
                }
                // Every position from `middle` to `found` reads `found`: the answer is at most `middle`.
                Some(_) => high = middle,
                None => break,
            }
        }
        reader.next_from = low;
        Ok(reader)
    }

    /// The next bundle, or `None` past the tail.
    pub async fn next(&mut self) -> Result<Option<StreamMessage>, ReadError> {
        if self.next_from > self.until {
            return Ok(None);
        }
        let found = self.next_at(self.next_from).await?;
        match found {
            Some(message) if message.sequence <= self.until => {
                self.next_from = message.sequence + 1;
                Ok(Some(message))
            }
            _ => {
                self.next_from = self.until + 1;
                Ok(None)
            }
        }
    }

    /// The subject's first bundle at or after stream sequence `from`.
    async fn next_at(&self, from: u64) -> Result<Option<StreamMessage>, ReadError> {
        let found = self
            .stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(self.subject.clone())
            .send()
            .await;
        match found {
            Ok(message) => Ok(Some(message)),
            Err(error) if matches!(error.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// The `seq` of a stored bundle's last frame: from its headers, or by reading that frame.
pub fn last_frame_seq(message: &StreamMessage) -> Option<u64> {
    let header = |name: &str| message.headers.get(name).map(|value| value.as_str());
    bundle::last_seq(
        header(bundle::FIRST_SEQ_HEADER),
        header(bundle::FRAME_TYPES_HEADER),
    )
    .or_else(|| {
        #[derive(serde::Deserialize)]
        struct Seq {
            seq: u64,
        }
        bundle::last_frame(&message.payload)
            .and_then(|frame| serde_json::from_slice::<Seq>(frame).ok())
            .map(|frame| frame.seq)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(frame_types: &str, first_seq: &str, payload: &str) -> StreamMessage {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(bundle::FRAME_TYPES_HEADER, frame_types);
        headers.insert(bundle::FIRST_SEQ_HEADER, first_seq);
        StreamMessage {
            subject: "ss.out.t1".into(),
            sequence: 1,
            headers,
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            time: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn reads_the_last_seq_from_the_headers() {
        let message = stored("token,token,message_complete", "7", "");
        assert_eq!(last_frame_seq(&message), Some(9));
    }

    /// Found by `cargo fuzz` (target `retained_frames`): `first + count - 1` overflowed (a panic
    /// in debug builds) for a one-frame bundle at `seq` u64::MAX.
    #[test]
    fn a_bundle_at_u64_max_does_not_overflow() {
        let max = u64::MAX.to_string();
        let frame = format!(r#"{{"thread_id":"t1","seq":{max},"type":"token"}}"#);
        assert_eq!(
            last_frame_seq(&stored("token", &max, &frame)),
            Some(u64::MAX)
        );
        // Headers that count past u64::MAX: the frame itself says where the bundle ends.
        assert_eq!(
            last_frame_seq(&stored("token,token", &max, &frame)),
            Some(u64::MAX)
        );
        assert_eq!(last_frame_seq(&stored("token,token", &max, "")), None);
    }
}

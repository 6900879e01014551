//! The scripted model: offline and deterministic, so the whole stack runs with no key and tests
//! are exact. Its reply length and per-token delay are settable, for load tests.

use std::time::Duration;

const WORDS: [&str; 12] = [
    "Thanks", "for", "reaching", "out", "to", "Smart", "Support", "we", "are", "on", "it", "now",
];

/// Streams `reply_tokens` tokens, `token_delay` apart.
#[derive(Debug, Clone)]
pub struct ScriptedModel {
    pub reply_tokens: u32,
    pub token_delay: Duration,
    /// Content that makes the model fail mid-reply (a simulated outage).
    pub fail_on: Option<String>,
}

/// Tokens the scripted model streams before a simulated failure.
pub const TOKENS_BEFORE_FAILURE: usize = 2;

impl ScriptedModel {
    /// The reply's tokens, in order: the words of a fixed sentence, cycled, each with a trailing space.
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

    /// Prompt tokens of a message, by the scripted model's count: one per whitespace-separated word.
    pub fn prompt_tokens(&self, content: &str) -> u64 {
        content.split_whitespace().count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_have_the_configured_length() {
        let model = ScriptedModel {
            reply_tokens: 20,
            token_delay: Duration::ZERO,
            fail_on: Some("boom".into()),
        };
        assert!(model.fails_on("it goes boom"));
        assert!(!model.fails_on("all good"));
        let tokens: Vec<_> = model.reply_tokens().collect();
        assert_eq!(tokens.len(), 20);
        assert_eq!(tokens[0], "Thanks ");
        assert!(tokens[19].ends_with('.'));
        assert_eq!(model.prompt_tokens("where is  my order"), 4);
    }
}

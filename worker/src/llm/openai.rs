//! The `openai` provider: any OpenAI-compatible server, through async-openai.
//! (Being written: see the helper's task.)

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{ChatRequest, ChatStream, Classified, ClassifyRequest, LlmError, Model};

/// Settings of the `openai` provider.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// Includes `/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
}

pub struct OpenAiModel {
    settings: OpenAiSettings,
}

impl OpenAiModel {
    pub fn new(settings: OpenAiSettings) -> anyhow::Result<Self> {
        Ok(Self { settings })
    }
}

impl Model for OpenAiModel {
    fn default_model(&self) -> &str {
        &self.settings.model
    }

    fn classify<'a>(
        &'a self,
        _request: ClassifyRequest<'a>,
    ) -> BoxFuture<'a, Result<Classified, LlmError>> {
        Box::pin(async { Err(LlmError::Permanent("not yet".into())) })
    }

    fn chat<'a>(&'a self, _request: ChatRequest<'a>) -> BoxFuture<'a, Result<ChatStream, LlmError>> {
        Box::pin(async { Err(LlmError::Permanent("not yet".into())) })
    }
}

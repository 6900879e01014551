//! What the importer's unit tests share: the fixture documents and short ways to parse them.

use super::{
    parse_document, DocumentFormat, ImportError, ImportOptions, ImportedDocument, ImportedTool,
};

pub(super) const PETSTORE: &str = include_str!("../../../tests/fixtures/openapi/petstore.yaml");
pub(super) const LOYALTY: &str = include_str!("../../../tests/fixtures/openapi/loyalty-3.1.yaml");

pub(super) fn parse(text: &str) -> Result<ImportedDocument, ImportError> {
    parse_with(text, None)
}

pub(super) fn parse_with(
    text: &str,
    base_url: Option<&str>,
) -> Result<ImportedDocument, ImportError> {
    let options = ImportOptions {
        format: DocumentFormat::Detect,
        base_url: base_url.map(str::to_owned),
    };
    parse_document(text.as_bytes(), &options)
}

pub(super) fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(document) => panic!("expected an error, got {document:?}"),
        Err(error) => error.to_string(),
    }
}

pub(super) fn tool<'d>(document: &'d ImportedDocument, name: &str) -> &'d ImportedTool {
    document
        .tools
        .iter()
        .find(|tool| tool.name == name)
        .unwrap_or_else(|| panic!("no tool {name} in {:?}", document.tools))
}

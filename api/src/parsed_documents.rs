//! Parsed GraphQL documents of repeated queries, kept so each request does not parse its
//! query text again; and the GraphQL stages as tracing spans for the bench's profile.
//!
//! The portals send a handful of fixed documents (their operations are compiled in), so
//! almost every request's text was seen before. async-graphql parses the text and checks its
//! recursive depth and directive count on every request; here a text that passed both is
//! kept with its parsed document and the next request with the same text starts from a copy.
//! Validation still runs for every request (it depends on the variables), and so do the depth
//! and complexity limits, which are part of it.
//!
//! Bounded: at most [`MAX_DOCUMENTS`] texts of at most [`MAX_QUERY_BYTES`] each; when full,
//! the set is emptied and fills again with what is asked now, so a client sending ever new
//! texts costs itself the parse and nobody else more than that.
//!
//! The spans `graphql.parse`, `graphql.validate` and `graphql.execute` are stages of the
//! command path as `teachin bench stages` reports them.

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Response, ServerError, ServerResult, ValidationResult, Variables};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tracing::Instrument;

/// How many distinct query texts are kept.
pub const MAX_DOCUMENTS: usize = 256;
/// Longer texts are parsed every time (the portals' documents are far shorter).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// The schema extension (one per schema; requests share its documents).
#[derive(Clone, Default)]
pub struct ParsedDocuments {
    documents: Arc<Mutex<HashMap<String, ExecutableDocument>>>,
}

impl ParsedDocuments {
    /// Texts kept now (for tests).
    pub fn len(&self) -> usize {
        self.documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, query: &str) -> Option<ExecutableDocument> {
        self.documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(query)
            .cloned()
    }

    fn keep(&self, query: &str, document: &ExecutableDocument) {
        if query.len() > MAX_QUERY_BYTES {
            return;
        }
        let mut documents = self
            .documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if documents.len() >= MAX_DOCUMENTS {
            documents.clear();
        }
        documents.insert(query.to_owned(), document.clone());
    }
}

impl ExtensionFactory for ParsedDocuments {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Extension for ParsedDocuments {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let span = tracing::debug_span!("graphql.parse");
        if let Some(document) = span.in_scope(|| self.get(query)) {
            return Ok(document);
        }
        // Only a document that parsed and passed the depth and directive checks is kept.
        let document = next.run(ctx, query, variables).instrument(span).await?;
        self.keep(query, &document);
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx)
            .instrument(tracing::debug_span!("graphql.validate"))
            .await
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        next.run(ctx, operation_name)
            .instrument(tracing::debug_span!("graphql.execute"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};

    struct Query;

    #[Object]
    impl Query {
        async fn answer(&self) -> i32 {
            42
        }
        async fn nested(&self) -> Query {
            Query
        }
    }

    fn schema(documents: &ParsedDocuments) -> Schema<Query, EmptyMutation, EmptySubscription> {
        Schema::build(Query, EmptyMutation, EmptySubscription)
            .limit_recursive_depth(4)
            .extension(documents.clone())
            .finish()
    }

    #[tokio::test]
    async fn a_repeated_text_is_parsed_once_and_answers_the_same() {
        let documents = ParsedDocuments::default();
        let schema = schema(&documents);
        let first = schema.execute("{ answer }").await;
        let second = schema.execute("{ answer }").await;
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(first.data, second.data);
        assert_eq!(documents.len(), 1);
    }

    #[tokio::test]
    async fn texts_that_fail_to_parse_or_nest_too_deep_are_refused_every_time_and_not_kept() {
        let documents = ParsedDocuments::default();
        let schema = schema(&documents);
        for query in [
            "{ answer",
            "{ nested { nested { nested { nested { nested { answer } } } } } }",
        ] {
            for _ in 0..2 {
                assert!(!schema.execute(query).await.errors.is_empty(), "{query}");
            }
        }
        assert!(documents.is_empty());
    }

    #[tokio::test]
    async fn validation_still_runs_for_a_kept_document() {
        let documents = ParsedDocuments::default();
        let schema = schema(&documents);
        let query = "query($n: Int!) { answer }";
        // Kept once it parsed, even though this request fails validation (unused variable
        // and a missing value): the parse is the same for every request with this text.
        let first = schema.execute(query).await;
        let second = schema.execute(query).await;
        assert!(!first.errors.is_empty() && !second.errors.is_empty());
        assert_eq!(first.errors.len(), second.errors.len());
    }

    #[test]
    fn the_set_is_bounded() {
        let documents = ParsedDocuments::default();
        let document = async_graphql::parser::parse_query("{ answer }").unwrap();
        for n in 0..MAX_DOCUMENTS + 10 {
            documents.keep(&format!("{{ answer }} # {n}"), &document);
        }
        assert!(documents.len() <= MAX_DOCUMENTS);
        documents.keep(&"x".repeat(MAX_QUERY_BYTES + 1), &document);
        assert!(documents.get(&"x".repeat(MAX_QUERY_BYTES + 1)).is_none());
    }
}

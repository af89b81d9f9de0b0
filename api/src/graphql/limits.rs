//! What one GraphQL document may ask for, checked after parsing and before anything runs,
//! so an expensive or abusive request is refused whole instead of half-executed:
//!
//! - **Cost with page sizes.** async-graphql's complexity counts one point per field; a
//!   connection asked for `first: 100` does a hundred times the work of its fields. Here a
//!   field with a page-size argument (`first` or `limit`, found in the schema, so every
//!   paged field present and future is covered) multiplies the cost of what it selects by the
//!   size asked (the default page size when none is), and a document over [`MAX_COST`] is
//!   `QUERY_TOO_COMPLEX`. The global complexity and depth limits stay as well.
//! - **Model calls.** Aliases let one document repeat a mutation: 600 × `requestSentences`
//!   would be 600 model calls. At most [`MAX_MODEL_CALLS`] fields that call the model per
//!   document (`TOO_MANY_MODEL_CALLS`); identical ones (same field, same arguments) within a
//!   document are answered once ([`ModelCalls`]), and each counts against the daily quota
//!   (`crate::quota`).
//! - **Introspection** only in local mode (`ApiState::introspection`): elsewhere `__schema`
//!   and `__type` are `FORBIDDEN` (`__typename` stays: clients use it).
//!
//! Fragments are followed with their cost remembered per fragment, so a document cannot make
//! the walk itself expensive; a fragment cycle (refused by validation afterwards) is cut.

use super::ApiState;
use crate::access::Caller;
use crate::error::{ApiError, ApiResult, Code};
use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::registry::{MetaTypeName, Registry};
use async_graphql::{Context, Name, Request, ServerResult, Value, Variables};
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use teachin_projections::queries::paging::DEFAULT_PAGE_SIZE;

/// The most a document may cost: one point per field, a paged field's selection times its
/// page size. The portals' largest page (100 rows of a dozen fields) costs about 1,300.
pub const MAX_COST: u64 = super::MAX_COMPLEXITY as u64;

/// Fields that call the AI model that one document may hold.
pub const MAX_MODEL_CALLS: usize = 3;

/// The mutations that lead to a model call (a tutor reply or a generation request).
pub const MODEL_CALLING_FIELDS: &[&str] = &[
    "sendTutorMessage",
    "explainMistake",
    "requestSentences",
    "requestSplitSentences",
    "requestWordExplanation",
    "requestEmailDraft",
];

/// The arguments that name a page size.
const PAGE_SIZE_ARGUMENTS: &[&str] = &["first", "limit"];

/// The schema extension enforcing the limits above.
pub struct DocumentLimits;

impl ExtensionFactory for DocumentLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentLimitsExtension)
    }
}

struct DocumentLimitsExtension;

#[async_trait::async_trait]
impl Extension for DocumentLimitsExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let mut request = request.data(ModelCalls::default());
        if !introspection_allowed(ctx) {
            request = request.disable_introspection();
        }
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let asked = Asked::of(&ctx.schema_env.registry, &document, variables);
        check(&asked, introspection_allowed(ctx)).map_err(|e| {
            async_graphql::Error::from(e).into_server_error(async_graphql::Pos::default())
        })?;
        Ok(document)
    }
}

/// Introspection is on where the state says so; without a state (the SDL) it is harmless.
fn introspection_allowed(ctx: &ExtensionContext<'_>) -> bool {
    ctx.data_opt::<ApiState>().is_none_or(|s| s.introspection)
}

/// The verdict on what a document asks.
fn check(asked: &Asked, introspection: bool) -> ApiResult<()> {
    if asked.introspects && !introspection {
        return Err(ApiError::refused(
            Code::Forbidden,
            "schema introspection is off in this environment",
        ));
    }
    if asked.model_calls > MAX_MODEL_CALLS {
        return Err(ApiError::refused(
            Code::TooManyModelCalls,
            format!(
                "a request may ask the AI at most {MAX_MODEL_CALLS} times; this one asks {} times",
                asked.model_calls
            ),
        ));
    }
    if asked.cost > MAX_COST {
        return Err(ApiError::refused(
            Code::QueryTooComplex,
            format!(
                "the query costs {} and at most {MAX_COST} is allowed (a paged field costs its \
                 selection times its page size: ask for smaller pages or fewer fields)",
                asked.cost
            ),
        ));
    }
    Ok(())
}

/// What a document asks for, over all its operations.
#[derive(Debug, Default, PartialEq, Eq)]
struct Asked {
    cost: u64,
    model_calls: usize,
    introspects: bool,
}

/// The cost and counts of one selection set (kept per fragment).
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    cost: u64,
    model_calls: usize,
    introspects: bool,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.cost = self.cost.saturating_add(other.cost);
        self.model_calls = self.model_calls.saturating_add(other.model_calls);
        self.introspects |= other.introspects;
    }
}

struct Walk<'a> {
    registry: &'a Registry,
    document: &'a ExecutableDocument,
    variables: &'a Variables,
    operation: &'a OperationDefinition,
    mutation_type: Option<&'a str>,
    /// Fragments already tallied (by name and the type they were spread into).
    fragments: HashMap<(Name, String), Tally>,
    /// Fragments being tallied, to cut a cycle.
    open: Vec<Name>,
}

impl Asked {
    fn of(registry: &Registry, document: &ExecutableDocument, variables: &Variables) -> Asked {
        let operations: Vec<&OperationDefinition> = match &document.operations {
            DocumentOperations::Single(op) => vec![&op.node],
            DocumentOperations::Multiple(ops) => ops.values().map(|op| &op.node).collect(),
        };
        let mut asked = Asked::default();
        for operation in operations {
            let root = match operation.ty {
                async_graphql::parser::types::OperationType::Query => {
                    Some(registry.query_type.as_str())
                }
                async_graphql::parser::types::OperationType::Mutation => {
                    registry.mutation_type.as_deref()
                }
                async_graphql::parser::types::OperationType::Subscription => {
                    registry.subscription_type.as_deref()
                }
            };
            let mut walk = Walk {
                registry,
                document,
                variables,
                operation,
                mutation_type: registry.mutation_type.as_deref(),
                fragments: HashMap::new(),
                open: Vec::new(),
            };
            let tally = walk.selection_set(&operation.selection_set.node, root);
            asked.cost = asked.cost.saturating_add(tally.cost);
            asked.model_calls = asked.model_calls.saturating_add(tally.model_calls);
            asked.introspects |= tally.introspects;
        }
        asked
    }
}

impl Walk<'_> {
    fn selection_set(&mut self, set: &SelectionSet, parent: Option<&str>) -> Tally {
        let mut tally = Tally::default();
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let name = field.name.node.as_str();
                    if name == "__schema" || name == "__type" {
                        tally.introspects = true;
                    }
                    if parent.is_some()
                        && parent == self.mutation_type
                        && MODEL_CALLING_FIELDS.contains(&name)
                    {
                        tally.model_calls += 1;
                    }
                    let meta = parent
                        .and_then(|p| self.registry.types.get(p))
                        .and_then(|t| t.fields())
                        .and_then(|fields| fields.get(name));
                    let child_type = meta.map(|m| MetaTypeName::concrete_typename(&m.ty));
                    let children = self.selection_set(&field.selection_set.node, child_type);
                    let page = meta
                        .and_then(|m| {
                            PAGE_SIZE_ARGUMENTS
                                .iter()
                                .find(|arg| m.args.contains_key(**arg))
                        })
                        .map(|arg| self.page_size(field, arg));
                    let own = children.cost.saturating_add(1);
                    tally.add(Tally {
                        cost: own.saturating_mul(page.unwrap_or(1)),
                        // A page of results does not call the model once per row.
                        ..children
                    });
                }
                Selection::InlineFragment(fragment) => {
                    let fragment = &fragment.node;
                    let on = fragment
                        .type_condition
                        .as_ref()
                        .map(|c| c.node.on.node.as_str())
                        .or(parent);
                    let inner = self.selection_set(&fragment.selection_set.node, on);
                    tally.add(inner);
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.clone();
                    tally.add(self.fragment(name, parent));
                }
            }
        }
        tally
    }

    fn fragment(&mut self, name: Name, parent: Option<&str>) -> Tally {
        let key = (name.clone(), parent.unwrap_or_default().to_string());
        if let Some(known) = self.fragments.get(&key) {
            return *known;
        }
        if self.open.contains(&name) {
            return Tally::default();
        }
        let Some(definition) = self.document.fragments.get(&name) else {
            return Tally::default();
        };
        self.open.push(name);
        let on = definition.node.type_condition.node.on.node.to_string();
        let tally = self.selection_set(&definition.node.selection_set.node, Some(&on));
        self.open.pop();
        self.fragments.insert(key, tally);
        tally
    }

    /// A variable's value: given with the request, else its default in the operation.
    fn variable(&self, name: &Name) -> Option<Value> {
        self.variables.get(name).cloned().or_else(|| {
            self.operation
                .variable_definitions
                .iter()
                .find(|d| d.node.name.node == *name)
                .and_then(|d| d.node.default_value.as_ref())
                .map(|v| v.node.clone())
        })
    }

    /// The page size a field asks for: its argument (a literal or a variable, the variable's
    /// default when not given), else the default page size.
    fn page_size(&self, field: &async_graphql::parser::types::Field, argument: &str) -> u64 {
        let given = field.get_argument(argument).and_then(|value| {
            value
                .node
                .clone()
                .into_const_with(|variable| self.variable(&variable).ok_or(()))
                .ok()
        });
        match given {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_i64().map(|v| v.max(0) as u64))
                .unwrap_or(u64::MAX)
                .max(1),
            _ => DEFAULT_PAGE_SIZE as u64,
        }
    }
}

/// The answers of the model-calling fields already run in this request, by field and
/// arguments: an identical field later in the same document gets the same answer instead of
/// a second model call.
#[derive(Default)]
pub struct ModelCalls(Mutex<HashMap<String, Box<dyn Any + Send + Sync>>>);

/// Runs one model-calling field: answered from an identical field earlier in the request if
/// there was one; otherwise counted against the caller's daily quota (refused when spent),
/// run, and the use given back if the field failed or was a replay that calls no model
/// (`replayed`).
pub(crate) async fn model_call<T, F>(
    ctx: &Context<'_>,
    caller: Caller,
    replayed: impl Fn(&T) -> bool,
    run: F,
) -> ApiResult<T>
where
    T: Clone + Send + Sync + 'static,
    F: Future<Output = ApiResult<T>>,
{
    let key = call_key(ctx);
    let calls = ctx.data_opt::<ModelCalls>();
    if let (Some(calls), Some(key)) = (calls, &key) {
        let seen = calls.0.lock().expect("model calls");
        if let Some(answer) = seen.get(key).and_then(|a| a.downcast_ref::<T>()) {
            return Ok(answer.clone());
        }
    }
    let quotas = &super::state(ctx).quotas;
    let admitted = quotas.admit_model_call(caller).await?;
    let outcome = run.await;
    match &outcome {
        Ok(answer) if !replayed(answer) => {}
        _ => quotas.give_back(admitted).await,
    }
    if let (Ok(answer), Some(calls), Some(key)) = (&outcome, calls, key) {
        calls
            .0
            .lock()
            .expect("model calls")
            .insert(key, Box::new(answer.clone()));
    }
    outcome
}

/// The field's name and its arguments (variables resolved), in name order.
fn call_key(ctx: &Context<'_>) -> Option<String> {
    let field = ctx.field();
    let mut arguments = field.arguments().ok()?;
    arguments.sort_by(|a, b| a.0.cmp(&b.0));
    Some(format!("{}{arguments:?}", field.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::ServerError;

    /// Captures what a document asks, with the real schema's registry, and stops the
    /// request there (nothing executes).
    struct Capture(Arc<Mutex<Option<Asked>>>);

    impl ExtensionFactory for Capture {
        fn create(&self) -> Arc<dyn Extension> {
            Arc::new(Capture(self.0.clone()))
        }
    }

    #[async_trait::async_trait]
    impl Extension for Capture {
        async fn parse_query(
            &self,
            ctx: &ExtensionContext<'_>,
            query: &str,
            variables: &Variables,
            _next: NextParseQuery<'_>,
        ) -> ServerResult<ExecutableDocument> {
            let document = async_graphql::parser::parse_query(query).unwrap();
            *self.0.lock().unwrap() =
                Some(Asked::of(&ctx.schema_env.registry, &document, variables));
            Err(ServerError::new("captured", None))
        }
    }

    async fn asked(query: &str, variables: serde_json::Value) -> Asked {
        let seen = Arc::new(Mutex::new(None));
        let schema = super::super::builder()
            .extension(Capture(seen.clone()))
            .finish();
        let request = Request::new(query).variables(Variables::from_json(variables));
        let response = schema.execute(request).await;
        assert!(response.data == async_graphql::Value::Null, "nothing runs");
        let asked = seen.lock().unwrap().take();
        asked.expect("the document was parsed")
    }

    #[tokio::test]
    async fn a_page_multiplies_what_it_selects() {
        let small = asked(
            "{ users(first: 10) { edges { node { userId firstName } } } }",
            serde_json::json!({}),
        )
        .await;
        // users × 10 pages of (users 1 + edges (1 + node (1 + 2))).
        assert_eq!(small.cost, 10 * (1 + (1 + (1 + 2))));
        let by_variable = asked(
            "query($n: Int) { users(first: $n) { edges { node { userId firstName } } } }",
            serde_json::json!({ "n": 1000 }),
        )
        .await;
        assert_eq!(by_variable.cost, 1000 * 5);
        let by_default = asked(
            "query($n: Int = 100) { users(first: $n) { edges { node { userId } } } }",
            serde_json::json!({}),
        )
        .await;
        assert_eq!(by_default.cost, 100 * 4);
        let unpaged = asked(
            "{ users { edges { node { userId } } } }",
            serde_json::json!({}),
        )
        .await;
        assert_eq!(unpaged.cost, DEFAULT_PAGE_SIZE as u64 * 4);
        assert!(check(&by_variable, true).is_err_and(|e| e.code == Code::QueryTooComplex));
        assert!(check(&small, true).is_ok());
    }

    #[tokio::test]
    async fn fragments_count_once_per_use_and_cycles_end() {
        let spread = asked(
            "query { users(first: 2) { ...page } } fragment page on UserViewConnection { edges { node { userId } } }",
            serde_json::json!({}),
        ).await;
        assert_eq!(spread.cost, 2 * 4);
        let cycle = asked(
            "query { users { ...a } } fragment a on UserViewConnection { ...b } fragment b on UserViewConnection { ...a }",
            serde_json::json!({}),
        ).await;
        assert_eq!(cycle.cost, DEFAULT_PAGE_SIZE as u64);
    }

    #[tokio::test]
    async fn aliased_model_calls_are_counted() {
        let many: String = (0..600)
            .map(|i| format!("a{i}: requestSentences(gameType: TYPING_PRACTICE) {{ requestId }} "))
            .collect();
        let asked_many = asked(&format!("mutation {{ {many} }}"), serde_json::json!({})).await;
        assert_eq!(asked_many.model_calls, 600);
        assert!(check(&asked_many, true).is_err_and(|e| e.code == Code::TooManyModelCalls));
        let in_fragment = asked(
            "mutation { ...m ...m } fragment m on Mutation { requestSentences(gameType: TYPING_PRACTICE) { requestId } }",
            serde_json::json!({}),
        ).await;
        assert_eq!(in_fragment.model_calls, 2);
        let one = asked(
            "mutation { sendTutorMessage(kind: DEFAULT, text: \"hi\") { requestId } }",
            serde_json::json!({}),
        )
        .await;
        assert_eq!(one.model_calls, 1);
        assert!(check(&one, true).is_ok());
    }

    #[tokio::test]
    async fn the_schema_refuses_a_document_over_the_limits_before_running_it() {
        let schema = super::super::builder().finish();
        let many: String = (0..=MAX_MODEL_CALLS)
            .map(|i| format!("a{i}: requestSentences(gameType: TYPING_PRACTICE) {{ requestId }} "))
            .collect();
        let response = schema.execute(format!("mutation {{ {many} }}")).await;
        let code = response.errors[0]
            .extensions
            .as_ref()
            .unwrap()
            .get("code")
            .cloned();
        assert_eq!(code, Some(Value::from("TOO_MANY_MODEL_CALLS")));
        let response = schema
            .execute("{ users(first: 5000) { edges { node { userId } } } }")
            .await;
        let code = response.errors[0]
            .extensions
            .as_ref()
            .unwrap()
            .get("code")
            .cloned();
        assert_eq!(code, Some(Value::from("QUERY_TOO_COMPLEX")));
    }

    #[tokio::test]
    async fn introspection_is_refused_where_it_is_off() {
        let schema = asked("{ __schema { queryType { name } } }", serde_json::json!({})).await;
        assert!(schema.introspects);
        assert!(check(&schema, true).is_ok());
        assert!(check(&schema, false).is_err_and(|e| e.code == Code::Forbidden));
        let typename = asked("{ __typename }", serde_json::json!({})).await;
        assert!(!typename.introspects);
        assert!(check(&typename, false).is_ok());
    }
}

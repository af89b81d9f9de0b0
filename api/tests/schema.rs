//! The committed SDL (`api/schema.graphql`) is the portals' contract: this test fails when
//! the code's schema drifts from it. After an intended change, regenerate the file with
//! `UPDATE_SCHEMA=1 cargo test -p teachin-api --test schema` and commit it with the change.

use std::path::Path;

#[test]
fn the_committed_schema_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    let current = teachin_api::graphql::sdl();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &current).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "api/schema.graphql is out of date; run `UPDATE_SCHEMA=1 cargo test -p teachin-api --test schema` and commit it"
    );
}

/// Every query, mutation and subscription field has a row in the authorization table, and
/// every row names a field that exists (deny by default would hide a forgotten row).
#[test]
fn every_operation_has_an_authorization_rule() {
    let sdl = teachin_api::graphql::sdl();
    let mut fields = Vec::new();
    for root in ["type Query {", "type Mutation {", "type Subscription {"] {
        let start = sdl
            .find(root)
            .unwrap_or_else(|| panic!("{root} in the SDL"));
        let body = &sdl[start + root.len()..];
        let body = &body[..body.find("\n}").unwrap()];
        let mut in_description = false;
        for line in body.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("\"\"\"") {
                // A block description opens and closes on its own line, unless it is one line.
                if !(trimmed.len() > 6 && trimmed.ends_with("\"\"\"")) {
                    in_description = !in_description;
                }
                continue;
            }
            // Fields sit one tab in; their arguments, deeper.
            let is_field = line.starts_with('\t') && !line.starts_with("\t\t");
            if in_description || !is_field || trimmed.starts_with('"') {
                continue;
            }
            let name: String = trimmed
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                fields.push(name);
            }
        }
    }
    for field in &fields {
        assert!(
            teachin_api::access::rule_of(field).is_some(),
            "`{field}` has no row in access::RULES"
        );
    }
    for (name, _) in teachin_api::access::RULES {
        assert!(
            fields.iter().any(|f| f == name),
            "RULES names `{name}`, which the schema lacks"
        );
    }
}

//! The prompts, one versioned file each under `workers/prompts/`, compiled in with
//! `include_str!` so a deployed binary always has the prompts it was tested with, and an
//! answer can name the prompt version that produced it. Changing a prompt means adding
//! `KEY.v(N+1).md` and pointing the constant at it.

use std::collections::BTreeSet;

/// One prompt: a template with `{{name}}` placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prompt {
    pub key: &'static str,
    pub version: u32,
    pub template: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("prompt {key} v{version} needs a value for {{{{{name}}}}}")]
    Missing {
        key: &'static str,
        version: u32,
        name: String,
    },
    #[error("prompt {key} v{version} has no placeholder {{{{{name}}}}}")]
    Unknown {
        key: &'static str,
        version: u32,
        name: String,
    },
}

macro_rules! prompt {
    ($name:ident, $key:literal, $version:literal) => {
        pub const $name: Prompt = Prompt {
            key: $key,
            version: $version,
            template: include_str!(concat!("../../prompts/", $key, ".v", $version, ".md")),
        };
    };
}

prompt!(TUTOR_SYSTEM, "tutor.system", 1);
prompt!(TUTOR_GLOBAL_SYSTEM, "tutor.global.system", 1);
prompt!(TUTOR_GLOBAL_PAGE_CONTEXT, "tutor.global.page_context", 1);
prompt!(EXPLAIN_MISTAKE_SYSTEM, "explain_mistake.system", 1);
prompt!(EXPLAIN_MISTAKE_USER, "explain_mistake.user", 1);
prompt!(EXPLAIN_MISTAKE_RULE, "explain_mistake.rule", 1);
prompt!(TITLE, "title", 1);
prompt!(SENTENCES, "sentences", 1);
prompt!(WORD_EXPLAIN, "word_explain", 1);
prompt!(EMAIL_DRAFT, "email_draft", 1);

/// Every prompt in use.
pub const ALL: &[Prompt] = &[
    TUTOR_SYSTEM,
    TUTOR_GLOBAL_SYSTEM,
    TUTOR_GLOBAL_PAGE_CONTEXT,
    EXPLAIN_MISTAKE_SYSTEM,
    EXPLAIN_MISTAKE_USER,
    EXPLAIN_MISTAKE_RULE,
    TITLE,
    SENTENCES,
    WORD_EXPLAIN,
    EMAIL_DRAFT,
];

impl Prompt {
    /// The placeholders the template uses.
    pub fn placeholders(&self) -> BTreeSet<&'static str> {
        let mut names = BTreeSet::new();
        let mut rest = self.template;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            match after.find("}}") {
                Some(end) => {
                    names.insert(&after[..end]);
                    rest = &after[end + 2..];
                }
                None => break,
            }
        }
        names
    }

    /// The template with every placeholder filled; every value must be used, and every
    /// placeholder given (a prompt silently missing a part is worse than an error).
    pub fn render(&self, values: &[(&str, &str)]) -> Result<String, PromptError> {
        let wanted = self.placeholders();
        for (name, _) in values {
            if !wanted.contains(name) {
                return Err(PromptError::Unknown {
                    key: self.key,
                    version: self.version,
                    name: name.to_string(),
                });
            }
        }
        let mut text = self.template.trim_end().to_string();
        for name in wanted {
            let value = values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| PromptError::Missing {
                    key: self.key,
                    version: self.version,
                    name: name.to_string(),
                })?;
            text = text.replace(&format!("{{{{{name}}}}}"), value);
        }
        Ok(text)
    }

    /// `key@vN`, how events and logs name the prompt.
    pub fn id(&self) -> String {
        format!("{}@v{}", self.key, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_is_there_and_renders_when_given_its_placeholders() {
        let mut keys = BTreeSet::new();
        for prompt in ALL {
            assert!(keys.insert(prompt.key), "{} listed twice", prompt.key);
            assert!(
                !prompt.template.trim().is_empty(),
                "{} is empty",
                prompt.id()
            );
            let names: Vec<&str> = prompt.placeholders().into_iter().collect();
            let values: Vec<(&str, &str)> = names.iter().map(|n| (*n, "X")).collect();
            let text = prompt.render(&values).unwrap();
            assert!(
                !text.contains("{{"),
                "{} left a placeholder: {text}",
                prompt.id()
            );
        }
    }

    #[test]
    fn a_missing_or_unknown_value_is_an_error() {
        assert_eq!(
            EXPLAIN_MISTAKE_RULE.render(&[]),
            Err(PromptError::Missing {
                key: "explain_mistake.rule",
                version: 1,
                name: "language".into()
            })
        );
        assert!(matches!(
            EXPLAIN_MISTAKE_RULE.render(&[("language", "English"), ("mood", "x")]),
            Err(PromptError::Unknown { .. })
        ));
        let text = EXPLAIN_MISTAKE_RULE
            .render(&[("language", "English")])
            .unwrap();
        assert!(text.starts_with("Write the whole explanation in English."));
        // Single braces are literal: JSON examples survive.
        let title = TITLE.render(&[("messages", "שלום")]).unwrap();
        assert!(title.contains(r#"{"title": "..."}"#));
        assert_eq!(TITLE.id(), "title@v1");
    }
}

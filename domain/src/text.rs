//! The one rule for free text typed into a command: surrounding whitespace is dropped, and
//! what is left must fit a limit counted in characters (not bytes, so a Hebrew name gets as
//! many letters as an English one).
//!
//! Every aggregate needs this for its names, messages and descriptions, and each used to
//! carry its own copy. They live here so that "trimmed", "blank" and "too long" mean the same
//! thing everywhere. Only the checking is shared: each aggregate still turns a
//! [`TextProblem`] into its own error, with its own field name and message.

/// Why a text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextProblem {
    /// Nothing but whitespace.
    Empty,
    /// More than `max` characters once trimmed.
    TooLong { max: usize },
}

impl TextProblem {
    /// The caller's own error for this problem, for error types with a variant per problem.
    pub fn pick<E>(self, empty: E, too_long: E) -> E {
        match self {
            TextProblem::Empty => empty,
            TextProblem::TooLong { .. } => too_long,
        }
    }

    /// A reason in the words of the `InvalidInput` errors: `required` for an empty text, and
    /// "`what` can be at most N characters long" for a long one.
    pub fn reason(self, required: &str, what: &str) -> String {
        match self {
            TextProblem::Empty => required.to_string(),
            TextProblem::TooLong { max } => format!("{what} can be at most {max} characters long"),
        }
    }
}

/// A required text: `raw` trimmed, if it is 1..=`max_chars` characters long.
pub fn bounded(raw: &str, max_chars: usize) -> Result<&str, TextProblem> {
    match optional(Some(raw), max_chars)? {
        Some(text) => Ok(text),
        None => Err(TextProblem::Empty),
    }
}

/// An optional text, where a blank one counts as absent: `raw` trimmed, `None` if nothing is
/// left, refused only when it is longer than `max_chars` characters. Never
/// [`TextProblem::Empty`].
pub fn optional(raw: Option<&str>, max_chars: usize) -> Result<Option<&str>, TextProblem> {
    let Some(text) = raw.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > max_chars {
        Err(TextProblem::TooLong { max: max_chars })
    } else {
        Ok(Some(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_text_is_trimmed_and_counted_in_characters() {
        assert_eq!(bounded("  שלום \n", 4), Ok("שלום"));
        assert_eq!(bounded("שלום!", 4), Err(TextProblem::TooLong { max: 4 }));
        assert_eq!(bounded("", 4), Err(TextProblem::Empty));
        assert_eq!(bounded(" \t ", 4), Err(TextProblem::Empty));
    }

    #[test]
    fn a_blank_optional_text_is_absent_and_a_long_one_refused() {
        assert_eq!(optional(None, 3), Ok(None));
        assert_eq!(optional(Some("   "), 3), Ok(None));
        assert_eq!(optional(Some(" abc "), 3), Ok(Some("abc")));
        assert_eq!(
            optional(Some("abcd"), 3),
            Err(TextProblem::TooLong { max: 3 })
        );
    }

    #[test]
    fn a_problem_picks_the_callers_error() {
        assert_eq!(TextProblem::Empty.pick("empty", "long"), "empty");
        assert_eq!(
            TextProblem::TooLong { max: 1 }.pick("empty", "long"),
            "long"
        );
        assert_eq!(
            TextProblem::Empty.reason("a name is required", "a name"),
            "a name is required"
        );
        assert_eq!(
            TextProblem::TooLong { max: 5 }.reason("a name is required", "a name"),
            "a name can be at most 5 characters long"
        );
    }
}

//! How an answer is marked, kept apart from the aggregate so the rules can be read and
//! tested on their own. These are the original platform's rules (its `AccuracyCalculator` and
//! sentence `Splitter`), with one deliberate difference: every length and distance here is
//! measured in Unicode characters, never bytes, because the sentences are Hebrew and may carry
//! nikud (vowel points), which are characters of their own.

use crate::vocabulary::GameType;

/// The verdict on one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grade {
    /// The answer matches the answer key exactly (element by element, ignoring the whitespace
    /// around each element).
    pub correct: bool,
    /// How close the answer came, 0–100 with two decimals. Always 100 when correct.
    pub accuracy: f64,
}

/// Marks `given` against the answer key `correct` by the rules of `game`.
///
/// A correct answer scores 100. Otherwise a word-order answer scores the share of words in
/// the right place, and a typed or spoken answer scores how similar its text is to the key.
pub fn grade(game: GameType, correct: &[String], given: &[String]) -> Grade {
    if is_correct(correct, given) {
        return Grade {
            correct: true,
            accuracy: 100.0,
        };
    }
    let accuracy = match game {
        GameType::WordOrder => word_order_accuracy(correct, given),
        GameType::TypingPractice | GameType::SpeakingPractice => similarity_accuracy(
            correct.first().map(String::as_str).unwrap_or_default(),
            given.first().map(String::as_str).unwrap_or_default(),
        ),
    };
    Grade {
        correct: false,
        accuracy,
    }
}

/// Whether the answer equals the key: same number of elements, each equal once trimmed.
pub fn is_correct(correct: &[String], given: &[String]) -> bool {
    correct.len() == given.len() && correct.iter().zip(given).all(|(c, g)| c.trim() == g.trim())
}

/// The percentage of positions holding the right word, over the longer of the two lists, so
/// that both missing and extra words cost points.
pub fn word_order_accuracy(correct: &[String], given: &[String]) -> f64 {
    let positions = correct.len().max(given.len());
    if positions == 0 {
        return 100.0;
    }
    let in_place = correct
        .iter()
        .zip(given)
        .filter(|(c, g)| c.trim() == g.trim())
        .count();
    round2(in_place as f64 * 100.0 / positions as f64)
}

/// Levenshtein similarity as a percentage: `(1 − distance / longer length) × 100`, over the
/// trimmed texts. Two empty texts are identical (100).
pub fn similarity_accuracy(correct: &str, given: &str) -> f64 {
    let (correct, given) = (correct.trim(), given.trim());
    let longer = correct.chars().count().max(given.chars().count());
    if longer == 0 {
        return 100.0;
    }
    let distance = levenshtein(correct, given);
    round2((1.0 - distance as f64 / longer as f64) * 100.0)
}

/// The number of single-character insertions, deletions and substitutions that turn `a` into
/// `b`, counted in Unicode characters.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // One row of the classic dynamic-programming table is enough.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            let cost = usize::from(ca != cb);
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + cost);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Rounds to two decimals, the precision accuracy is shown and stored with.
pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The answer key for a generated sentence: the words to put in order for the word-order
/// game, or the whole sentence for typing and speaking.
pub fn answer_key(game: GameType, sentence: &str) -> Vec<String> {
    match game {
        GameType::WordOrder => split_words(sentence),
        GameType::TypingPractice | GameType::SpeakingPractice => {
            vec![sentence.trim().to_string()]
        }
    }
}

/// Splits a sentence into the words of the word-order game: split on whitespace, strip the
/// punctuation around each word (quotes, commas, full stops, a Hebrew sof pasuq...) and drop
/// what is left empty. Punctuation *inside* a word (a maqaf, an apostrophe) stays.
pub fn split_words(sentence: &str) -> Vec<String> {
    sentence
        .split_whitespace()
        .map(|word| word.trim_matches(|c: char| !is_word_char(c)))
        .filter(|word| !word.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `c` belongs to a word rather than to the punctuation around it: letters and
/// digits, Hebrew points (nikud and cantillation marks, which follow the letter they sit on —
/// stripping one would change the word), and the geresh and gershayim, which mark Hebrew
/// abbreviations and foreign sounds (`וכו׳`, `צה״ל`).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_hebrew_point(c) || matches!(c, '\u{05F3}' | '\u{05F4}')
}

/// The combining marks of the Hebrew block, U+0591–U+05C7, without the four punctuation
/// characters that live in the same range (maqaf, paseq, sof pasuq, nun hafukha).
fn is_hebrew_point(c: char) -> bool {
    ('\u{0591}'..='\u{05C7}').contains(&c)
        && !matches!(c, '\u{05BE}' | '\u{05C0}' | '\u{05C3}' | '\u{05C6}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_identical_answer_is_correct_even_with_stray_whitespace() {
        let key = words(&["אני", "אוהב", "קפה"]);
        let grade = grade(GameType::WordOrder, &key, &words(&[" אני", "אוהב ", "קפה"]));
        assert_eq!(
            grade,
            Grade {
                correct: true,
                accuracy: 100.0
            }
        );
    }

    #[test]
    fn a_different_number_of_elements_is_never_correct() {
        let key = words(&["אני", "אוהב"]);
        assert!(!is_correct(&key, &words(&["אני"])));
        assert!(!is_correct(&key, &words(&["אני", "אוהב", "קפה"])));
        assert!(is_correct(&[], &[]));
    }

    #[test]
    fn word_order_counts_words_in_place_over_the_longer_list() {
        let key = words(&["אני", "אוהב", "קפה", "חם"]);
        // Two of four in place.
        assert_eq!(
            word_order_accuracy(&key, &words(&["אני", "קפה", "אוהב", "חם"])),
            50.0
        );
        // Missing words count against the answer.
        assert_eq!(word_order_accuracy(&key, &words(&["אני"])), 25.0);
        // So do extra words: 3 in place over 5 positions.
        assert_eq!(
            word_order_accuracy(&key, &words(&["אני", "אוהב", "קפה", "קר", "חם"])),
            60.0
        );
        assert_eq!(word_order_accuracy(&key, &[]), 0.0);
        assert_eq!(word_order_accuracy(&[], &[]), 100.0);
    }

    #[test]
    fn word_order_accuracy_is_rounded_to_two_decimals() {
        let key = words(&["א", "ב", "ג"]);
        assert_eq!(word_order_accuracy(&key, &words(&["א", "ג", "ב"])), 33.33);
        assert_eq!(word_order_accuracy(&key, &words(&["א", "ב", "ד"])), 66.67);
    }

    #[test]
    fn levenshtein_counts_characters_not_bytes() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("שלום", ""), 4);
        assert_eq!(levenshtein("", "שלום"), 4);
        assert_eq!(levenshtein("שלום", "שלום"), 0);
        // One substitution (ם → ן), although each letter is two bytes.
        assert_eq!(levenshtein("שלום", "שלון"), 1);
        // Nikud marks are characters: שָׁלוֹם has three more than שלום.
        assert_eq!(levenshtein("שָׁלוֹם", "שלום"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn typing_and_speaking_score_text_similarity_of_the_first_element() {
        let key = words(&["אני אוהב קפה"]);
        // 12 characters, one wrong letter: (1 - 1/12) * 100 = 91.67.
        let grade_typing = grade(GameType::TypingPractice, &key, &words(&["אני אוהב כפה"]));
        assert_eq!(
            grade_typing,
            Grade {
                correct: false,
                accuracy: 91.67
            }
        );
        let grade_speaking = grade(GameType::SpeakingPractice, &key, &words(&["אני אוהב"]));
        assert!(!grade_speaking.correct);
        // Four characters missing out of twelve.
        assert_eq!(grade_speaking.accuracy, 66.67);
    }

    #[test]
    fn similarity_handles_empty_and_unequal_lengths() {
        assert_eq!(similarity_accuracy("", ""), 100.0);
        assert_eq!(similarity_accuracy("שלום", ""), 0.0);
        assert_eq!(similarity_accuracy("", "שלום"), 0.0);
        assert_eq!(similarity_accuracy("  שלום ", "שלום"), 100.0);
        // Longer answer than key: distance 4 over 8 characters.
        assert_eq!(similarity_accuracy("שלום", "שלום רב!"), 50.0);
        // A key with nikud against a plain answer: 3 of 7 characters differ.
        assert_eq!(similarity_accuracy("שָׁלוֹם", "שלום"), 57.14);
    }

    #[test]
    fn a_typed_answer_with_extra_elements_is_scored_on_its_first_element() {
        let key = words(&["שלום"]);
        let g = grade(GameType::TypingPractice, &key, &words(&["שלום", "עוד"]));
        assert!(!g.correct);
        assert_eq!(g.accuracy, 100.0);
        let g = grade(GameType::TypingPractice, &key, &[]);
        assert_eq!(g.accuracy, 0.0);
    }

    #[test]
    fn splitting_strips_punctuation_around_words_but_keeps_nikud() {
        assert_eq!(
            split_words("  \"שָׁלוֹם, מָה שְׁלוֹמְךָ?\"  "),
            words(&["שָׁלוֹם", "מָה", "שְׁלוֹמְךָ"])
        );
        assert_eq!(
            split_words("אני אוהב קפה ... וכו׳ , צה״ל!"),
            words(&["אני", "אוהב", "קפה", "וכו׳", "צה״ל"])
        );
        // A sof pasuq and a trailing maqaf are punctuation; a maqaf inside a word stays.
        assert_eq!(split_words("בֵּית־הַסֵּפֶר׃ כָּל־"), words(&["בֵּית־הַסֵּפֶר", "כָּל"]));
        assert_eq!(split_words("Hello, world."), words(&["Hello", "world"]));
        assert!(split_words(" ?! ").is_empty());
        assert!(split_words("").is_empty());
    }

    #[test]
    fn the_answer_key_depends_on_the_game() {
        assert_eq!(
            answer_key(GameType::WordOrder, "אני אוהב קפה."),
            words(&["אני", "אוהב", "קפה"])
        );
        assert_eq!(
            answer_key(GameType::TypingPractice, "  אני אוהב קפה. "),
            words(&["אני אוהב קפה."])
        );
        assert_eq!(
            answer_key(GameType::SpeakingPractice, "שלום"),
            words(&["שלום"])
        );
    }
}

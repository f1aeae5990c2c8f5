//! Evaluation text as the stages that read a corpus see it (`perplexity`, `calibrate`, the
//! sweep's prompts): one place, in the `stage` implementation set that every node's key
//! holds, so an edit here moves the keys of all of them.

/// The text without the `<doc …>` and `</doc>` lines of a Wikipedia extract; the other lines
/// are kept as they are, newlines included.
pub(crate) fn strip_doc_markers(text: &str) -> String {
    text.split_inclusive('\n').filter(|l| !(l.starts_with("<doc") || l.starts_with("</doc"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_markers_are_stripped() {
        assert_eq!(strip_doc_markers("<doc id=1>\na b\n</doc>\n<doc>\nc\n</doc>"), "a b\nc\n");
        // A line merely mentioning a marker stays; the last line needs no newline.
        assert_eq!(strip_doc_markers("a <doc> b\n<doc x>\nc"), "a <doc> b\nc");
    }
}

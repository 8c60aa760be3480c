//! The backend pipeline `CLIPTokenizer.__init__` assembles: normalizer, pre-tokenizer, BPE model and
//! byte-level decoder (special tokens and post-processing are added by the caller).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::files::BpeTables;
use crate::{Error, Result};

/// CLIP's pre-tokenizer pattern; the matches are the words, everything else (whitespace) is dropped.
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// BPE's end-of-word suffix in CLIP's vocabulary.
pub(super) const END_OF_WORD: &str = "</w>";

/// The backend without special tokens or post-processing, as `CLIPTokenizer.__init__` builds it.
pub(super) fn backend(tables: BpeTables, unk: &str) -> Result<Tokenizer> {
    let source = tables.source.display().to_string();
    let invalid = |e: tokenizers::Error| Error::invalid(source.clone(), e.to_string());
    let bpe = BPE::builder()
        .vocab_and_merges(tables.vocab, tables.merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(END_OF_WORD.to_string())
        .fuse_unk(false)
        .unk_token(unk.to_string())
        .build()
        .map_err(invalid)?;
    let internal = |e: tokenizers::Error| Error::invalid("CLIP tokenizer pipeline", e.to_string());
    let normalizer = NormalizerSequence::new(vec![
        NFC.into(),
        Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(internal)?
            .into(),
        Lowercase.into(),
    ]);
    let pre_tokenizer = PreTokenizerSequence::new(vec![
        Split::new(
            SplitPattern::Regex(SPLIT_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(internal)?
        .into(),
        ByteLevel::new(false, true, true).into(),
    ]);
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(internal)?
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

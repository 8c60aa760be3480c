//! The CLIP tokenizer with transformers `CLIPTokenizer` semantics.

//! Schedulers: the diffusers family.

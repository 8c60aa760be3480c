//! The networks of a Stable Diffusion pipeline, with diffusers' weight names.

pub mod clip;

//! diffuse-train's tests in one binary: training against torch and diffusers' training scripts
//! (`training_parity`), whole training runs (`training`), and the bundled model it trained (`bundled`, judged by
//! `judge`).

#[path = "../../../diffuse/tests/library/common/mod.rs"]
mod common;
mod judge;

mod bundled;
mod training;
mod training_parity;

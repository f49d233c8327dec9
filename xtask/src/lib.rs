//! Project tasks. The lab is a library too, so that integration tests build and fault it in
//! process.

pub mod bench;
pub mod cluster;
pub mod image;
pub mod lab;
pub mod setup;
pub mod sh;

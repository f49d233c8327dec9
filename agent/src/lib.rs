//! Calico dataplane agent: reads this node's kernel dataplane and explains it against what
//! Calico Felix programs. See `shared/DESIGN.md` for the architecture.

pub mod analysis;
pub mod collector;
pub mod daemon;
pub mod desired;
pub mod diag;
pub mod flows;
pub mod node;
pub mod observed;
pub mod pipeline;
pub mod report;
pub mod verify;

//! What the agent renders for people and machines: `diag`/`check` and `flows` text (JSON is the
//! serialised [`crate::analysis::Analysis`] and [`crate::flows::report::FlowsReport`]).

pub mod diag_text;
pub mod flows_text;
pub mod kube_status;

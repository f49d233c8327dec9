//! What the agent renders for people and machines: `diag`/`check` and `flows` text (JSON is the
//! serialised [`crate::analysis::Analysis`] and [`crate::flows::report::FlowsReport`]), the
//! daemon's metrics and HTTP surfaces, and its writes to Kubernetes.

pub mod bgp_text;
pub mod diag_text;
pub mod flows_text;
pub mod http;
pub mod kube_status;
pub mod metrics;
pub mod otlp;
pub mod push;
pub mod spool;
pub mod wrap;

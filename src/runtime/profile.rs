//! ONNX Runtime's profile, as [`crate::runtime::Runtime::profiled_session`] writes it: a
//! Chrome-trace JSON array. Each node that runs leaves events named after it,
//!
//! ```json
//! { "cat": "Node", "name": "/h.0/attn/MatMul_kernel_time",
//!   "args": { "op_name": "MatMul", "provider": "CPUExecutionProvider", … } }
//! ```
//!
//! the kernel's own (`<node>_kernel_time`) and others around it (`<node>_fence_before`, …).
//! Two questions are asked of it, and they read its events differently, on purpose:
//!
//! | view                   | counts, per        | events that count                               |
//! |------------------------|--------------------|-------------------------------------------------|
//! | [`nodes_per_provider`] | `args.provider`    | every `Node` event; `_kernel_time` stripped where present, so a node's events are one node |
//! | [`kernels_per_op`]     | `args.op_name`     | `<node>_kernel_time` only: a kernel that ran    |
//!
//! The backend probe asks the first (where did ONNX Runtime place work?), the INT8 coverage
//! count the second (which kernels ran?). Both count distinct node names.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The suffix of a kernel's event: `<node>_kernel_time`.
const KERNEL_TIME: &str = "_kernel_time";

/// Which `Node` events name a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Events {
    /// Every one: `<node>_kernel_time` is `<node>`, any other name is itself.
    All,
    /// Only `<node>_kernel_time`.
    KernelTime,
}

/// Execution provider → distinct nodes with an event there.
pub(crate) fn nodes_per_provider(profile: &str) -> Result<BTreeMap<String, usize>, String> {
    count_nodes(profile, "provider", Events::All)
}

/// Op type → distinct nodes whose kernel ran (a `<node>_kernel_time` event).
pub(crate) fn kernels_per_op(profile: &str) -> Result<BTreeMap<String, usize>, String> {
    count_nodes(profile, "op_name", Events::KernelTime)
}

/// `args.{by}` → distinct nodes, over the `Node` events that `events` admits and that carry
/// both a name and `args.{by}`.
fn count_nodes(profile: &str, by: &str, events: Events) -> Result<BTreeMap<String, usize>, String> {
    let trace: Value = serde_json::from_str(profile).map_err(|e| format!("not JSON: {e}"))?;
    let trace = trace.as_array().ok_or("not a JSON array of trace events")?;
    let mut nodes: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for ev in trace {
        if ev["cat"].as_str() != Some("Node") {
            continue;
        }
        let (Some(name), Some(key)) = (ev["name"].as_str(), ev["args"][by].as_str()) else { continue };
        let node = match (name.strip_suffix(KERNEL_TIME), events) {
            (Some(node), _) => node,
            (None, Events::All) => name,
            (None, Events::KernelTime) => continue,
        };
        nodes.entry(key.to_string()).or_default().insert(node);
    }
    Ok(nodes.into_iter().map(|(k, n)| (k, n.len())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    /// One profile, both views: `b`'s fence event carries a provider but is no kernel, so the
    /// provider view counts it as a node of its own and the kernel view does not count it.
    #[test]
    fn the_two_views_differ_only_on_events_without_the_kernel_suffix() {
        let profile = r#"[
            {"cat": "Session", "name": "model_run", "args": {}},
            {"cat": "Node", "name": "a_fence_before", "args": {"op_name": "MatMul"}},
            {"cat": "Node", "name": "a_kernel_time", "args": {"op_name": "MatMul", "provider": "CUDAExecutionProvider"}},
            {"cat": "Node", "name": "a_kernel_time", "args": {"op_name": "MatMul", "provider": "CUDAExecutionProvider"}},
            {"cat": "Node", "name": "b_fence_after", "args": {"op_name": "Shape", "provider": "CPUExecutionProvider"}},
            {"cat": "Node", "name": "b_kernel_time", "args": {"op_name": "Shape", "provider": "CPUExecutionProvider"}},
            {"cat": "Node", "name": "c_kernel_time", "args": {"op_name": "MatMul", "provider": "CUDAExecutionProvider"}},
            {"cat": "Node", "name": "d_kernel_time", "args": {"provider": "CPUExecutionProvider"}}
        ]"#;
        // `b` and `b_fence_after` are two nodes on the CPU; `d` has no op name but a provider.
        assert_eq!(nodes_per_provider(profile).unwrap(), counts(&[("CPUExecutionProvider", 3), ("CUDAExecutionProvider", 2)]));
        // `a_fence_before` and `b_fence_after` are not kernels; `d` has no op name.
        assert_eq!(kernels_per_op(profile).unwrap(), counts(&[("MatMul", 2), ("Shape", 1)]));
    }

    /// The probe's counts as they were before the views shared a parser.
    #[test]
    fn providers_count_distinct_nodes() {
        let profile = r#"[
            {"cat":"Session","name":"model_run","args":{}},
            {"cat":"Node","name":"a_fence_before","args":{"op_name":"MatMul"}},
            {"cat":"Node","name":"a_kernel_time","args":{"op_name":"MatMul","provider":"CUDAExecutionProvider"}},
            {"cat":"Node","name":"b_kernel_time","args":{"op_name":"Shape","provider":"CPUExecutionProvider"}},
            {"cat":"Node","name":"c_kernel_time","args":{"op_name":"Add","provider":"CUDAExecutionProvider"}}
        ]"#;
        assert_eq!(nodes_per_provider(profile).unwrap(), counts(&[("CPUExecutionProvider", 1), ("CUDAExecutionProvider", 2)]));
    }

    /// The INT8 coverage count's, likewise.
    #[test]
    fn kernels_are_counted_once_per_node() {
        let profile = r#"[
            {"cat": "Session", "name": "model_run"},
            {"cat": "Node", "name": "a_kernel_time", "args": {"op_name": "MatMulIntegerToFloat"}},
            {"cat": "Node", "name": "a_kernel_time", "args": {"op_name": "MatMulIntegerToFloat"}},
            {"cat": "Node", "name": "a_fence_before", "args": {"op_name": "MatMulIntegerToFloat"}},
            {"cat": "Node", "name": "b_kernel_time", "args": {"op_name": "MatMul"}}
        ]"#;
        assert_eq!(kernels_per_op(profile).unwrap(), counts(&[("MatMul", 1), ("MatMulIntegerToFloat", 1)]));
    }

    #[test]
    fn a_profile_that_is_not_an_array_of_events_is_an_error() {
        for view in [nodes_per_provider, kernels_per_op] {
            assert_eq!(view("{}").unwrap_err(), "not a JSON array of trace events");
            assert!(view("nope").unwrap_err().starts_with("not JSON: "));
        }
    }
}

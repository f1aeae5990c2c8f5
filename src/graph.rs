//! The sealed DAG: every node's inputs resolved to workspace files or to other nodes'
//! outputs, checked for cycles, in a fixed topological order. Built once, then only read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::diag::{self, Diagnostic, Diagnostics};
use crate::pipeline::Pipeline;

/// Where one input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file or directory in the workspace.
    Source,
    /// Output `out` of node `node`.
    Output { node: usize, out: usize },
}

/// One resolved input of a node.
#[derive(Debug, Clone)]
pub struct Input {
    /// The dep's name in the stage.
    pub dep: String,
    /// Workspace-relative path; outputs are at `out/<node>/<path>`.
    pub path: String,
    pub origin: Origin,
}

pub struct Graph {
    pub pipeline: Pipeline,
    /// Per node, its inputs in declaration order.
    pub inputs: Vec<Vec<Input>>,
    pub upstream: Vec<Vec<usize>>,
    pub downstream: Vec<Vec<usize>>,
    /// Every node, upstream before downstream; ties keep declaration order.
    pub order: Vec<usize>,
}

impl Graph {
    pub fn build(pipeline: Pipeline, root: &Path) -> Result<Graph, Diagnostics> {
        let nodes = &pipeline.nodes;
        let src = &pipeline.source;
        let mut outputs: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for (j, o) in n.outs.iter().enumerate() {
                outputs.insert(n.out_path(o), (i, j));
            }
        }

        let mut diags = Vec::new();
        let mut inputs = vec![Vec::new(); nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            for dep in &n.deps {
                for pattern in &dep.patterns {
                    let mut push = |path: &str, origin: Origin| {
                        inputs[i].push(Input { dep: dep.name.clone(), path: path.to_string(), origin });
                    };
                    if pattern.contains('*') {
                        let matched: Vec<_> = outputs.iter().filter(|(p, _)| glob_match(pattern, p)).collect();
                        if matched.is_empty() {
                            diags.push(src.diag(
                                &dep.field,
                                format!("dep pattern `{pattern}` of `{}` matches no stage output", n.id),
                                Some("patterns match outputs as `out/<node-id>/<out>`, `*` standing for one path segment".into()),
                            ));
                        }
                        for (p, &(node, out)) in matched {
                            push(p, Origin::Output { node, out });
                        }
                    } else if let Some(&(node, out)) = outputs.get(pattern) {
                        push(pattern, Origin::Output { node, out });
                    } else if pattern == "out" || pattern.starts_with("out/") {
                        let help = diag::suggest(pattern, outputs.keys().map(String::as_str))
                            .or_else(|| Some("outputs are referred to as `out/<node-id>/<out>`; `tr118 graph` lists nodes".into()));
                        diags.push(src.diag(&dep.field, format!("dep `{pattern}` of `{}` names no stage output", n.id), help));
                    } else if !root.join(pattern).exists() {
                        diags.push(src.diag(
                            &dep.field,
                            format!("dep `{pattern}` of `{}` does not exist", n.id),
                            Some("deps are paths relative to the workspace root, or outputs `out/<node-id>/<out>`".into()),
                        ));
                    } else {
                        push(pattern, Origin::Source);
                    }
                }
            }
        }
        if !diags.is_empty() {
            return Err(Diagnostics(diags));
        }

        let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(nodes.len(), nodes.len());
        let idx: Vec<NodeIndex> = (0..nodes.len()).map(|i| g.add_node(i)).collect();
        let mut upstream = vec![Vec::new(); nodes.len()];
        let mut downstream = vec![Vec::new(); nodes.len()];
        for (i, ins) in inputs.iter().enumerate() {
            let producers: BTreeSet<usize> = ins
                .iter()
                .filter_map(|inp| match inp.origin {
                    Origin::Output { node, .. } => Some(node),
                    Origin::Source => None,
                })
                .collect();
            for p in producers {
                g.add_edge(idx[p], idx[i], ());
                upstream[i].push(p);
                downstream[p].push(i);
            }
        }

        let order = match toposort(&g, None) {
            Ok(_) => stable_topo(&upstream, &downstream),
            Err(_) => return Err(Diagnostics(vec![cycle_error(&pipeline, &g, &upstream)])),
        };
        Ok(Graph { pipeline, inputs, upstream, downstream, order })
    }

    pub fn id(&self, i: usize) -> &str {
        &self.pipeline.nodes[i].id
    }

    /// The nodes `targets` name, with everything upstream of them, in topological order.
    /// A target is a node id, a stage name, or an id prefix (`sweep/onnxruntime-cpu`).
    pub fn select(&self, targets: &[String]) -> Result<Vec<usize>, String> {
        if targets.is_empty() {
            return Ok(self.order.clone());
        }
        let nodes = &self.pipeline.nodes;
        let mut wanted = BTreeSet::new();
        for t in targets {
            let t = t.trim_end_matches('/');
            let hits: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].id == t || nodes[i].stage == t || nodes[i].id.starts_with(&format!("{t}/"))).collect();
            if hits.is_empty() {
                let names: Vec<&str> = self.pipeline.stages.iter().map(String::as_str).chain(nodes.iter().map(|n| n.id.as_str())).collect();
                let help = diag::suggest(t, names).map_or(String::new(), |h| format!("\n  help: {h}"));
                return Err(format!("no stage or node `{t}` in `{}`{help}", self.pipeline.file.display()));
            }
            wanted.extend(hits);
        }
        let mut stack: Vec<usize> = wanted.iter().copied().collect();
        while let Some(i) = stack.pop() {
            for &u in &self.upstream[i] {
                if wanted.insert(u) {
                    stack.push(u);
                }
            }
        }
        Ok(self.order.iter().copied().filter(|i| wanted.contains(i)).collect())
    }

    /// Graphviz dot of the `selected` nodes and the edges between them.
    pub fn to_dot(&self, selected: &[usize]) -> String {
        let mut s = String::from("digraph tr118 {\n  rankdir=LR;\n  node [shape=box];\n");
        for &i in selected {
            let n = &self.pipeline.nodes[i];
            let style = if n.timing { ", style=bold" } else { "" };
            s.push_str(&format!("  \"{}\" [label=\"{}\\n({})\"{style}];\n", n.id, n.id, n.kind.name()));
        }
        for (a, b) in self.edges(selected) {
            s.push_str(&format!("  \"{}\" -> \"{}\";\n", self.id(a), self.id(b)));
        }
        s.push_str("}\n");
        s
    }

    /// A Mermaid flowchart of the `selected` nodes.
    pub fn to_mermaid(&self, selected: &[usize]) -> String {
        let mut s = String::from("flowchart LR\n");
        for &i in selected {
            s.push_str(&format!("  n{i}[\"{}\"]\n", self.id(i)));
        }
        for (a, b) in self.edges(selected) {
            s.push_str(&format!("  n{a} --> n{b}\n"));
        }
        s
    }

    fn edges(&self, selected: &[usize]) -> Vec<(usize, usize)> {
        let set: BTreeSet<usize> = selected.iter().copied().collect();
        let mut out = Vec::new();
        for &i in selected {
            out.extend(self.downstream[i].iter().filter(|d| set.contains(d)).map(|&d| (i, d)));
        }
        out
    }
}

/// Kahn's algorithm, always taking the ready node declared first, so the order (and hence
/// what runs first) does not depend on hashing or on petgraph's internals.
fn stable_topo(upstream: &[Vec<usize>], downstream: &[Vec<usize>]) -> Vec<usize> {
    let mut pending: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<usize> = (0..upstream.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(upstream.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &downstream[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.insert(d);
            }
        }
    }
    order
}

fn cycle_error(pipeline: &Pipeline, g: &DiGraph<usize, ()>, upstream: &[Vec<usize>]) -> Diagnostic {
    let nodes = &pipeline.nodes;
    let scc = tarjan_scc(g).into_iter().find(|c| c.len() > 1 || upstream[g[c[0]]].contains(&g[c[0]])).unwrap_or_default();
    let members: BTreeSet<usize> = scc.iter().map(|&n| g[n]).collect();
    // Walk the cycle from its first member along upstream edges that stay inside it.
    let start = *members.iter().next().unwrap_or(&0);
    let mut path = vec![start];
    let mut cur = start;
    while let Some(&next) = upstream[cur].iter().find(|u| members.contains(u)) {
        if next == start || path.contains(&next) {
            path.push(next);
            break;
        }
        path.push(next);
        cur = next;
    }
    path.reverse();
    let text = path.iter().map(|&i| format!("`{}`", nodes[i].id)).collect::<Vec<_>>().join(" → ");
    let first = &nodes[path[0]];
    pipeline.source.diag(
        &first.field,
        format!("dependency cycle: {text}"),
        Some("each arrow is a dep on the previous node's output; remove one of them".into()),
    )
}

/// `*` matches within one path segment; everything else literally.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let ps: Vec<&str> = pattern.split('/').collect();
    let xs: Vec<&str> = path.split('/').collect();
    ps.len() == xs.len() && ps.iter().zip(&xs).all(|(p, x)| segment_match(p.as_bytes(), x.as_bytes()))
}

fn segment_match(p: &[u8], x: &[u8]) -> bool {
    match p.split_first() {
        None => x.is_empty(),
        Some((b'*', rest)) => (0..=x.len()).any(|k| segment_match(rest, &x[k..])),
        Some((c, rest)) => x.first() == Some(c) && segment_match(rest, &x[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn star_matches_one_segment() {
        assert!(glob_match("out/sweep/*/r.jsonl", "out/sweep/cpu/r.jsonl"));
        assert!(!glob_match("out/sweep/*/r.jsonl", "out/sweep/cpu/short/r.jsonl"));
        assert!(glob_match("out/sweep/*/*/r.jsonl", "out/sweep/cpu/short/r.jsonl"));
        assert!(glob_match("out/s*/x", "out/sweep/x"));
        assert!(!glob_match("out/s*x/x", "out/sweep/x"));
    }
}

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

    pub(crate) fn id(&self, i: usize) -> &str {
        &self.pipeline.nodes[i].id
    }

    /// The nodes `targets` name, with everything upstream of them, in topological order.
    /// A target is a node id, a stage name, or an id prefix (`sweep/onnxruntime-cpu`).
    pub(crate) fn select(&self, targets: &[String]) -> Result<Vec<usize>, String> {
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
pub(crate) fn glob_match(pattern: &str, path: &str) -> bool {
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
    use super::*;

    /// The graph of `toml` in a fresh workspace holding `files`, or the diagnostics' text.
    fn build(toml: &str, files: &[&str]) -> Result<Graph, String> {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let file = dir.path().join("tr118.toml");
        std::fs::write(&file, toml).unwrap();
        let pipeline = Pipeline::load(&file, &[], crate::stage::registry()).map_err(|d| d.to_string())?;
        Graph::build(pipeline, dir.path()).map_err(|d| d.to_string())
    }

    /// A `cmd` stage writing `o.txt`, with `deps` as written inside a table.
    fn stage(name: &str, deps: &str) -> String {
        format!("[stages.{name}]\ncmd = [\"true\"]\ndeps = {{ {deps} }}\nouts = {{ o = \"o.txt\" }}\n")
    }

    fn ids(g: &Graph, nodes: &[usize]) -> Vec<String> {
        nodes.iter().map(|&i| g.id(i).to_string()).collect()
    }

    #[test]
    fn star_matches_one_segment() {
        assert!(glob_match("out/sweep/*/r.jsonl", "out/sweep/cpu/r.jsonl"));
        assert!(!glob_match("out/sweep/*/r.jsonl", "out/sweep/cpu/short/r.jsonl"));
        assert!(glob_match("out/sweep/*/*/r.jsonl", "out/sweep/cpu/short/r.jsonl"));
        assert!(glob_match("out/s*/x", "out/sweep/x"));
        assert!(!glob_match("out/s*x/x", "out/sweep/x"));
    }

    /// Upstream before downstream; among nodes ready together, the one declared first (the
    /// stages are declared `z b a m`, an order no sort would give).
    #[test]
    fn the_order_is_topological_and_ties_keep_declaration_order() {
        let toml = [stage("z", "i = \"out/b/o.txt\""), stage("b", ""), stage("a", ""), stage("m", "x = \"out/a/o.txt\", y = \"out/z/o.txt\"")].concat();
        let g = build(&toml, &[]).unwrap();
        assert_eq!(ids(&g, &[0, 1, 2, 3]), ["z", "b", "a", "m"]);
        assert_eq!(ids(&g, &g.order), ["b", "z", "a", "m"]);
        assert_eq!(ids(&g, &g.upstream[3]), ["z", "a"]);
        assert_eq!(ids(&g, &g.downstream[1]), ["z"]);
    }

    #[test]
    fn a_star_dep_takes_every_matching_output_and_each_producer_once() {
        let toml = format!(
            "[axes]\nb = [\"cpu\", \"gpu\"]\n\n[stages.sweep]\nmatrix = [\"b\"]\ncmd = [\"true\"]\nouts = {{ r = \"r.jsonl\", s = \"s.json\" }}\n\n{}",
            stage("stats", "runs = \"out/sweep/*/r.jsonl\", all = \"out/sweep/*/*\"")
        );
        let g = build(&toml, &[]).unwrap();
        let stats = g.order[2];
        assert_eq!(g.id(stats), "stats");
        let paths: Vec<&str> = g.inputs[stats].iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "out/sweep/cpu/r.jsonl",
                "out/sweep/gpu/r.jsonl",
                "out/sweep/cpu/r.jsonl",
                "out/sweep/cpu/s.json",
                "out/sweep/gpu/r.jsonl",
                "out/sweep/gpu/s.json"
            ]
        );
        assert_eq!(ids(&g, &g.upstream[stats]), ["sweep/cpu", "sweep/gpu"]);
    }

    #[test]
    fn deps_that_resolve_to_nothing_are_errors_at_their_field() {
        let e = build(&stage("a", "i = \"out/x/*.txt\""), &[]).err().unwrap();
        assert!(e.contains("dep pattern `out/x/*.txt` of `a` matches no stage output"), "{e}");
        let e = build(&[stage("a", ""), stage("b", "i = \"out/a/0.txt\"")].concat(), &[]).err().unwrap();
        assert!(e.contains("dep `out/a/0.txt` of `b` names no stage output") && e.contains("did you mean `out/a/o.txt`?"), "{e}");
        let e = build(&stage("a", "i = \"data.txt\""), &[]).err().unwrap();
        assert!(e.contains("dep `data.txt` of `a` does not exist"), "{e}");
        let g = build(&stage("a", "i = \"data.txt\""), &["data.txt"]).unwrap();
        assert_eq!(g.inputs[0][0].origin, Origin::Source);
    }

    #[test]
    fn a_cycle_is_one_error_that_walks_it() {
        let toml = [stage("a", "i = \"out/c/o.txt\""), stage("b", "i = \"out/a/o.txt\""), stage("c", "i = \"out/b/o.txt\""), stage("d", "")].concat();
        let e = build(&toml, &[]).err().unwrap();
        assert!(e.contains("dependency cycle: `a` → `b` → `c` → `a`"), "{e}");
    }

    #[test]
    fn a_target_selects_its_nodes_and_everything_upstream_in_order() {
        let toml = format!(
            "[axes]\nb = [\"cpu\", \"gpu\"]\n\n{}[stages.sweep]\nmatrix = [\"b\"]\ncmd = [\"true\"]\ndeps = {{ m = \"out/export/o.txt\" }}\nouts = {{ r = \"r.txt\" }}\n\n{}",
            [stage("fetch", ""), stage("export", "f = \"out/fetch/o.txt\""), stage("lint", "")].concat(),
            stage("stats", "r = \"out/sweep/*/r.txt\"")
        );
        let g = build(&toml, &[]).unwrap();
        let select = |t: &[&str]| g.select(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map(|s| ids(&g, &s));
        assert_eq!(select(&[]).unwrap().len(), 6);
        assert_eq!(select(&["export"]).unwrap(), ["fetch", "export"]);
        assert_eq!(select(&["sweep/gpu"]).unwrap(), ["fetch", "export", "sweep/gpu"]);
        assert_eq!(select(&["sweep/"]).unwrap(), ["fetch", "export", "sweep/cpu", "sweep/gpu"]);
        assert_eq!(select(&["lint", "export"]).unwrap(), ["fetch", "export", "lint"]);
        let e = select(&["sweeep"]).unwrap_err();
        assert!(e.contains("no stage or node `sweeep`") && e.contains("did you mean `sweep`?"), "{e}");
    }

    #[test]
    fn dot_and_mermaid_show_only_edges_between_selected_nodes() {
        let g = build(&[stage("a", ""), stage("b", "i = \"out/a/o.txt\""), stage("c", "i = \"out/b/o.txt\"")].concat(), &[]).unwrap();
        let dot = g.to_dot(&[1, 2]);
        assert!(dot.contains("\"b\" -> \"c\";") && !dot.contains("\"a\" ->") && !dot.contains("\"a\" ["), "{dot}");
        assert_eq!(g.to_mermaid(&[0, 1]), "flowchart LR\n  n0[\"a\"]\n  n1[\"b\"]\n  n0 --> n1\n");
    }
}

//! A pipeline file: TOML parsing, validation and matrix expansion (`Pipeline::load`), then
//! lowering into the sealed graph (`Graph::build`), and the rendering of every diagnostic.
//! `Pipeline::load` only takes a path, so the input is written to `tr118.toml` first.

use tr118::graph::Graph;
use tr118::pipeline::Pipeline;

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        let path = tr118_fuzz::write_fresh("pipeline", "tr118.toml", data);
        let root = path.parent().expect("a file in a directory");
        match Pipeline::load(&path, &[], tr118::stage_kinds()) {
            Ok(pipeline) => match Graph::build(pipeline, root) {
                Ok(graph) => {
                    let _ = graph.to_dot(&graph.order);
                    let _ = graph.to_mermaid(&graph.order);
                }
                Err(d) => drop(d.to_string()),
            },
            Err(d) => drop(d.to_string()),
        }
    });
}

//! The Python that tr118's helpers run in: the torch worker ([`crate::backend::torch`]) and
//! TensorRT for RTX's builder and runner ([`crate::trt::rtx`]).

/// The Python to run, when set; else `python3` from `PATH`.
pub const ENV: &str = "TR118_PYTHON";

/// The interpreter the helpers run under.
pub fn interpreter() -> String {
    std::env::var(ENV).ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

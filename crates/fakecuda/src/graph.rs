//! Graphs made by stream capture (`capture.rs`) and their executable instances:
//! `cuGraphInstantiate[_v2|WithFlags]`, `cuGraphLaunch`, `cuGraphExecDestroy`,
//! `cuGraphDestroy`.
//!
//! A graph here is the kernels a capture recorded, in order; an instance is a copy of them,
//! made at instantiation, so that destroying or re-capturing the graph leaves it alone. A
//! launch queues the instance's kernels on its stream in one piece, back to back, as the
//! device runs a captured chain; on a capturing stream it records them into that capture.
//! Not simulated: graphs built node by node, updating an instance, launches of one instance
//! on two streams ordered with each other (each runs in its stream's order only).

use std::sync::Arc;

use crate::capture::KernelNode;
use crate::error::{CuError, CuResult};
use crate::handles::Table;
use crate::stream::{Stream, Submitted};

/// `CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH`.
const AUTO_FREE_ON_LAUNCH: u64 = 0x1;
/// `CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD`, `_DEVICE_LAUNCH`, `_USE_NODE_PRIORITY`.
const UPLOAD: u64 = 0x2;
const DEVICE_LAUNCH: u64 = 0x4;
const USE_NODE_PRIORITY: u64 = 0x8;

/// A graph: the kernels a capture recorded.
#[derive(Debug)]
pub struct Graph {
    kernels: Vec<KernelNode>,
}

/// An executable instance of a graph.
#[derive(Debug)]
pub struct Exec {
    kernels: Vec<KernelNode>,
}

static GRAPHS: Table<Graph> = Table::new();
static EXECS: Table<Exec> = Table::new();

/// A new graph of `kernels`; returns its handle.
pub fn create(kernels: Vec<KernelNode>) -> usize {
    GRAPHS.insert(Arc::new(Graph { kernels }))
}

/// How many kernels the graph `handle` holds.
pub fn kernel_count(handle: usize) -> CuResult<usize> {
    Ok(graph(handle)?.kernels.len())
}

fn graph(handle: usize) -> CuResult<Arc<Graph>> {
    if handle == 0 {
        return Err(CuError::InvalidValue);
    }
    GRAPHS.get(handle).ok_or(CuError::InvalidHandle)
}

/// `cuGraphDestroy`: its instances stay usable.
pub fn destroy(handle: usize) -> CuResult {
    graph(handle)?;
    GRAPHS
        .remove(handle)
        .map(drop)
        .ok_or(CuError::InvalidHandle)
}

/// `cuGraphInstantiateWithFlags`: an executable copy of the graph; returns its handle.
/// Unknown flags, and auto-free with device launch, are `CUDA_ERROR_INVALID_VALUE`.
pub fn instantiate(handle: usize, flags: u64) -> CuResult<usize> {
    let known = AUTO_FREE_ON_LAUNCH | UPLOAD | DEVICE_LAUNCH | USE_NODE_PRIORITY;
    let both = AUTO_FREE_ON_LAUNCH | DEVICE_LAUNCH;
    if flags & !known != 0 || flags & both == both {
        return Err(CuError::InvalidValue);
    }
    let kernels = graph(handle)?.kernels.clone();
    Ok(EXECS.insert(Arc::new(Exec { kernels })))
}

fn exec(handle: usize) -> CuResult<Arc<Exec>> {
    if handle == 0 {
        return Err(CuError::InvalidValue);
    }
    EXECS.get(handle).ok_or(CuError::InvalidHandle)
}

/// `cuGraphExecDestroy`: launches already queued still run.
pub fn destroy_exec(handle: usize) -> CuResult {
    exec(handle)?;
    EXECS.remove(handle).map(drop).ok_or(CuError::InvalidHandle)
}

/// `cuGraphLaunch`: the instance's kernels, back to back on `stream` (or recorded into its
/// capture).
pub fn launch(handle: usize, stream: &Stream) -> CuResult<Submitted> {
    let ops = exec(handle)?.kernels.iter().map(|k| k.op()).collect();
    stream.submit_all(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{self, Mode};
    use crate::stream::{Marker, Op};
    use std::sync::Weak;
    use std::time::{Duration, Instant};

    fn stream() -> Arc<Stream> {
        Stream::spawn(Weak::new(), 100, crate::handles::fresh(), 0, 0).unwrap()
    }

    /// A graph of `ms` kernels captured on `s`.
    fn captured(s: &Stream, ms: &[u64]) -> usize {
        capture::begin(s, Mode::ThreadLocal).unwrap();
        for &ms in ms {
            s.submit(Op::Kernel(Duration::from_millis(ms), None))
                .unwrap();
        }
        create(capture::end(s).unwrap())
    }

    #[test]
    fn a_launch_runs_the_captured_kernels_in_order_on_the_launch_stream() {
        let _serial = capture::serial();
        let (capturing, other) = (stream(), stream());
        let graph = captured(&capturing, &[2, 3, 5]);
        assert_eq!(kernel_count(graph), Ok(3));
        let exec = instantiate(graph, 0).unwrap();
        destroy(graph).unwrap();
        // Two launches on another stream, held until both are queued: back to back, 20 ms.
        let (gate, start, end) = (Marker::new(), Marker::new(), Marker::new());
        other.submit(Op::Wait(Arc::clone(&gate))).unwrap();
        other.submit(Op::Record(Arc::clone(&start))).unwrap();
        assert_eq!(launch(exec, &other), Ok(Submitted::Queued));
        assert_eq!(launch(exec, &other), Ok(Submitted::Queued));
        other.submit(Op::Record(Arc::clone(&end))).unwrap();
        assert!(!other.is_idle());
        gate.complete(Instant::now());
        let took = end.wait() - start.time().unwrap();
        assert_eq!(took, Duration::from_millis(20));
        assert!(capturing.is_idle(), "the capturing stream ran nothing");
        destroy_exec(exec).unwrap();
        assert_eq!(launch(exec, &other), Err(CuError::InvalidHandle));
        capturing.shutdown();
        other.shutdown();
    }

    #[test]
    fn a_launch_into_a_capturing_stream_is_recorded_in_that_capture() {
        let _serial = capture::serial();
        let s = stream();
        let inner = instantiate(captured(&s, &[1, 2]), 0).unwrap();
        let id = capture::begin(&s, Mode::Global).unwrap();
        assert_eq!(launch(inner, &s), Ok(Submitted::Captured(id)));
        s.submit(Op::Kernel(Duration::from_millis(4), None))
            .unwrap();
        let outer = create(capture::end(&s).unwrap());
        assert_eq!(kernel_count(outer), Ok(3));
        assert!(s.is_idle());
        s.shutdown();
    }

    #[test]
    fn bad_handles_and_flags_are_refused() {
        let _serial = capture::serial();
        assert_eq!(instantiate(0, 0), Err(CuError::InvalidValue));
        assert_eq!(
            instantiate(crate::handles::fresh(), 0),
            Err(CuError::InvalidHandle)
        );
        let graph = create(Vec::new());
        assert_eq!(instantiate(graph, 0x10), Err(CuError::InvalidValue));
        assert_eq!(
            instantiate(graph, AUTO_FREE_ON_LAUNCH | DEVICE_LAUNCH),
            Err(CuError::InvalidValue)
        );
        let exec = instantiate(graph, AUTO_FREE_ON_LAUNCH | USE_NODE_PRIORITY).unwrap();
        assert_eq!(
            destroy_exec(graph),
            Err(CuError::InvalidHandle),
            "not an exec"
        );
        assert_eq!(destroy(exec), Err(CuError::InvalidHandle), "not a graph");
        destroy(graph).unwrap();
        assert_eq!(destroy(graph), Err(CuError::InvalidHandle));
        destroy_exec(exec).unwrap();
    }
}

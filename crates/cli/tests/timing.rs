//! Tests of the `gpuslice` command whose verdict rests on measured GPU time (`demo`'s 30 and
//! 70 percent). A binary of their own: cargo runs test binaries one after another, so here
//! they share the machine with nothing else of this crate's tests (the plugin's, the image
//! build, the containers), which on a two-core CI machine took the demo's shares off target.

mod util;

mod demo;

//! Modules loaded from PTX text, and their functions. The simulator does not compile PTX: it
//! finds the `.entry` declarations, and a function's behaviour is chosen by its name (see
//! `kernel.rs`). `cuLibraryLoadData` libraries are modules too, and their kernels
//! (`CUkernel`) are the same handles as functions.
//!
//! Like a real driver, which puts a module's code and data in device memory, every module
//! loaded while a context is current takes the device's module footprint
//! (`FAKECUDA_MODULE_FOOTPRINT`) for this process, charged like an allocation: memory the
//! program never asked for. It is given back when the module is unloaded, when that context
//! is destroyed (which unloads its modules; a library outlives it but no longer holds
//! memory), and at process exit.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::context::{self, Context};
use crate::device::Charge;
use crate::error::{CuError, CuResult};
use crate::handles::Table;
use crate::kernel::Kernel;

/// How a module was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `cuModuleLoad*`: it belongs to the context current at the load, and is unloaded when
    /// that context is destroyed.
    Module,
    /// `cuLibraryLoadData`: context-independent; it survives the destruction of the context
    /// it was loaded in, but its memory there is given back.
    Library,
}

/// A module's memory on the device of the context it was loaded in.
#[derive(Debug)]
struct Residence {
    context: usize,
    _charge: Charge,
}

/// A loaded module.
#[derive(Debug)]
pub struct Module {
    kind: Kind,
    entries: Vec<String>,
    ptx_version: i32,
    functions: Mutex<BTreeMap<String, usize>>,
    residence: Mutex<Option<Residence>>,
}

/// A module image that parsed: its kernels and PTX version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    entries: Vec<String>,
    ptx_version: i32,
}

/// A function (kernel) of a module.
#[derive(Debug)]
pub struct Function {
    /// The module's handle.
    pub module: usize,
    /// The entry's name.
    pub name: String,
    /// What launching it does.
    pub kernel: Kernel,
    ptx_version: i32,
    attributes: Mutex<BTreeMap<u32, i32>>,
}

static MODULES: Table<Module> = Table::new();
static FUNCTIONS: Table<Function> = Table::new();

/// Removes comments, so that `.entry` in a comment declares nothing.
fn strip_comments(ptx: &str) -> String {
    let mut out = String::with_capacity(ptx.len());
    let mut rest = ptx;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
            out.push(' ');
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn is_identifier(token: &str) -> bool {
    let mut chars = token.chars();
    let first_ok = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => true,
        Some('_' | '$' | '%') => token.len() > 1,
        _ => false,
    };
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// The names of the kernels a PTX text declares with `.entry` (with or without `.visible`).
pub fn parse_entries(ptx: &str) -> Vec<String> {
    let text = strip_comments(ptx);
    let mut entries = Vec::new();
    let mut tokens = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == '{' || c == ';')
        .filter(|t| !t.is_empty());
    while let Some(token) = tokens.next() {
        if token == ".entry"
            && let Some(name) = tokens.next().filter(|n| is_identifier(n))
        {
            entries.push(name.to_owned());
        }
    }
    entries
}

/// The `.version` of a PTX text times ten (`7.8` is 78), if it has one.
pub fn parse_version(ptx: &str) -> Option<i32> {
    let text = strip_comments(ptx);
    let mut tokens = text.split_whitespace();
    tokens.find(|t| *t == ".version")?;
    let (major, minor) = tokens.next()?.split_once('.')?;
    Some(major.parse::<i32>().ok()? * 10 + minor.parse::<i32>().ok()?)
}

/// Parses PTX text. Text without `.version` is not an image at all
/// (`CUDA_ERROR_INVALID_IMAGE`, as from the real driver); PTX without `.target` is invalid.
pub fn parse_ptx(ptx: &str) -> CuResult<Image> {
    let ptx_version = parse_version(ptx).ok_or(CuError::InvalidImage)?;
    if !strip_comments(ptx)
        .split_whitespace()
        .any(|t| t == ".target")
    {
        return Err(CuError::InvalidPtx);
    }
    Ok(Image {
        entries: parse_entries(ptx),
        ptx_version,
    })
}

/// Parses an image: PTX text, or a cubin / fatbinary, which the simulator cannot load.
pub fn parse_image(image: &[u8]) -> CuResult<Image> {
    const ELF: &[u8] = b"\x7fELF";
    const FATBIN: &[u8] = &0xba55_ed50_u32.to_le_bytes();
    if image.starts_with(ELF) || image.starts_with(FATBIN) {
        return Err(CuError::InvalidImage);
    }
    let text = std::str::from_utf8(image).map_err(|_| CuError::InvalidImage)?;
    parse_ptx(text)
}

/// Loads a module from an image. With a context (`cuModuleLoad*` always have one,
/// `cuLibraryLoadData` has the current one if any), the module takes the device's module
/// footprint for this process: `CUDA_ERROR_OUT_OF_MEMORY` if the device is full. Without
/// one, a library takes no device memory.
pub fn load_image(image: &[u8], kind: Kind, ctx: Option<&Context>) -> CuResult<usize> {
    let Image {
        entries,
        ptx_version,
    } = parse_image(image)?;
    let residence = match ctx {
        Some(ctx) => Some(Residence {
            context: ctx.handle,
            _charge: ctx.device.reserve(ctx.device.module_footprint)?,
        }),
        None => None,
    };
    let handle = MODULES.insert(Arc::new(Module {
        kind,
        entries,
        ptx_version,
        functions: Mutex::new(BTreeMap::new()),
        residence: Mutex::new(residence),
    }));
    // A context destroyed while the module was being loaded in it may have missed it in its
    // sweep (context_destroyed): do that module's part of the sweep here.
    if let Some(ctx) = ctx
        && context::get(ctx.handle).is_err()
    {
        leave_context(handle, ctx.handle);
        if kind == Kind::Module {
            return Err(CuError::InvalidContext);
        }
    }
    Ok(handle)
}

/// Unloads module `handle` if it is a module of context `ctx`; only gives back its memory
/// if it is a library loaded in `ctx`.
fn leave_context(handle: usize, ctx: usize) {
    let Some(m) = MODULES.get(handle) else {
        return;
    };
    let mut residence = m.residence.lock();
    if residence.as_ref().is_none_or(|r| r.context != ctx) {
        return;
    }
    residence.take();
    drop(residence);
    if m.kind == Kind::Module {
        let _ = unload(handle);
    }
}

/// The destruction of context `ctx`: its modules are unloaded, and libraries loaded in it
/// give back their memory (they stay loaded).
pub fn context_destroyed(ctx: usize) {
    let resident = MODULES.select(|m| {
        m.residence
            .lock()
            .as_ref()
            .is_some_and(|r| r.context == ctx)
    });
    for handle in resident {
        leave_context(handle, ctx);
    }
}

/// `cuModuleGetFunction`: the function `name` of `module` (the same handle on every call).
pub fn get_function(module: usize, name: &str) -> CuResult<usize> {
    let m = MODULES.get(module).ok_or(CuError::InvalidHandle)?;
    if !m.entries.iter().any(|e| e == name) {
        return Err(CuError::NotFound);
    }
    let mut functions = m.functions.lock();
    if let Some(&handle) = functions.get(name) {
        return Ok(handle);
    }
    let handle = FUNCTIONS.insert(Arc::new(Function {
        module,
        name: name.to_owned(),
        kernel: Kernel::from_name(name),
        ptx_version: m.ptx_version,
        attributes: Mutex::new(BTreeMap::new()),
    }));
    functions.insert(name.to_owned(), handle);
    Ok(handle)
}

/// Whether `module` is a loaded module.
pub fn exists(module: usize) -> bool {
    MODULES.get(module).is_some()
}

/// `cuModuleUnload`: the module and its functions become invalid.
pub fn unload(module: usize) -> CuResult {
    let m = MODULES.remove(module).ok_or(CuError::InvalidHandle)?;
    // Given back now, though a concurrent call may hold the module a moment longer.
    m.residence.lock().take();
    FUNCTIONS.remove_where(|f| f.module == module);
    Ok(())
}

/// The function behind `handle` (a `CUfunction` or `CUkernel`).
pub fn function(handle: usize) -> CuResult<Arc<Function>> {
    FUNCTIONS.get(handle).ok_or(CuError::InvalidHandle)
}

impl Function {
    /// `cuFuncGetAttribute`: plausible values for a small kernel; set values read back.
    pub fn attribute(&self, attribute: u32) -> i32 {
        if let Some(&v) = self.attributes.lock().get(&attribute) {
            return v;
        }
        match attribute {
            0 => 1024,             // MAX_THREADS_PER_BLOCK
            4 => 16,               // NUM_REGS
            5 => self.ptx_version, // PTX_VERSION
            6 => 90,               // BINARY_VERSION
            8 => 48 * 1024,        // MAX_DYNAMIC_SHARED_SIZE_BYTES
            9 => -1,               // PREFERRED_SHARED_MEMORY_CARVEOUT
            _ => 0,
        }
    }

    /// `cuFuncSetAttribute`.
    pub fn set_attribute(&self, attribute: u32, value: i32) {
        self.attributes.lock().insert(attribute, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPIN_PTX: &str = include_str!("../../../examples/ptx/spin.ptx");

    #[test]
    fn entries_are_found_with_and_without_visible() {
        let ptx = "
            .version 8.0
            .target sm_90
            .address_size 64
            .visible .entry first(.param .u64 a) { ret; }
            .entry second() { ret; }
            .entry third
            (
            ) { ret; }
            .func not_a_kernel() { ret; }
        ";
        assert_eq!(parse_entries(ptx), ["first", "second", "third"]);
        assert_eq!(parse_version(ptx), Some(80));
    }

    #[test]
    fn entries_in_comments_are_ignored() {
        let ptx = "// .entry commented()\n/* .visible .entry blocked() */ .entry real() {}";
        assert_eq!(parse_entries(ptx), ["real"]);
    }

    #[test]
    fn the_example_ptx_declares_spin_and_noop() {
        assert_eq!(
            parse_entries(SPIN_PTX),
            ["gpuslice_spin", "gpuslice_work", "gpuslice_noop"]
        );
        assert_eq!(parse_version(SPIN_PTX), Some(78));
    }

    #[test]
    fn functions_are_found_by_name_and_unload_invalidates_them() {
        let m = load_image(SPIN_PTX.as_bytes(), Kind::Module, None).unwrap();
        let spin = get_function(m, "gpuslice_spin").unwrap();
        assert_eq!(get_function(m, "gpuslice_spin"), Ok(spin));
        assert_eq!(function(spin).unwrap().kernel, Kernel::Spin);
        assert_eq!(get_function(m, "missing"), Err(CuError::NotFound));
        unload(m).unwrap();
        assert_eq!(function(spin).unwrap_err(), CuError::InvalidHandle);
        assert_eq!(
            get_function(m, "gpuslice_spin"),
            Err(CuError::InvalidHandle)
        );
    }

    #[test]
    fn binaries_and_non_ptx_text_are_refused() {
        assert_eq!(parse_image(b"\x7fELF\x02\x01"), Err(CuError::InvalidImage));
        assert_eq!(
            parse_image(&[0x50, 0xed, 0x55, 0xba, 1]),
            Err(CuError::InvalidImage)
        );
        assert_eq!(parse_image(b"hello"), Err(CuError::InvalidImage));
        let no_target = load_image(b".version 7.8\n.entry k() {}", Kind::Library, None);
        assert_eq!(no_target, Err(CuError::InvalidPtx));
    }
}

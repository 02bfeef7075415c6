//! `include/gpuslice.h` checked against the layout: the header is compiled (C11, warnings
//! as errors, padding included), and every claim it makes is compared with the Rust side:
//!
//! - every `#define GPUSLICE_*` with a value, number or string, against the constant it
//!   stands for (a define missing from [`defines`] fails, so a new one gets checked);
//! - every struct and every field, in order: names, offsets and sizes (a struct or field the
//!   header has and [`structs`] lacks, or the reverse, fails);
//! - the sizes its comments give a struct (`(1120 bytes)`, `64-byte`) and the offsets they
//!   give a field (`offset 96`).

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64};

use super::*;
use crate::limits::{Limits, Priority};
use crate::variables::{DEFAULT_DIR, PINNED_TENANT_FILE, SHIM_VARIABLES};

fn header_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include/gpuslice.h")
}

fn header_text() -> String {
    std::fs::read_to_string(header_path()).expect("read include/gpuslice.h")
}

/// The size of a field's type, from an accessor (no value needed).
fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// A C struct of the header and its Rust layout.
struct CStruct {
    name: &'static str,
    size: usize,
    /// (name, offset, size), in declaration order.
    fields: Vec<(&'static str, usize, usize)>,
}

macro_rules! c_struct {
    ($c:literal => $rust:ty { $($field:ident),* $(,)? }) => {
        CStruct {
            name: $c,
            size: size_of::<$rust>(),
            fields: vec![$((
                stringify!($field),
                offset_of!($rust, $field),
                field_size(|s: &$rust| &s.$field),
            )),*],
        }
    };
}

/// Every struct of the header, as the Rust layout has it.
fn structs() -> Vec<CStruct> {
    vec![
        c_struct!("gpuslice_header" => Header {
            magic, layout_version, header_size, file_size, max_gpus, max_slots, table_offset,
            slot_offset, entry_size, slot_size, word,
        }),
        c_struct!("gpuslice_limits" => RawLimits {
            memory_limit_bytes, compute_share_permille, compute_limit_permille, priority,
            reserved,
        }),
        c_struct!("gpuslice_quota_gpu" => QuotaGpu { uuid, in_use, reserved, limits }),
        c_struct!("gpuslice_quota_file" => QuotaLayout { header, defaults, gpus }),
        c_struct!("gpuslice_usage_gpu" => UsageGpu {
            uuid, state, reserved0, oom_refusals, retired_gpu_time_ns, credit_ns,
            refilled_at_ns, throttled_ns,
        }),
        c_struct!("gpuslice_slot_gpu" => SlotGpu {
            memory_bytes, gpu_time_ns, pending_bytes, activity, compute,
        }),
        c_struct!("gpuslice_slot" => Slot {
            state, pid, claimed_unix_ms, reserved, pid_namespace, gpus,
        }),
        c_struct!("gpuslice_usage_file" => UsageLayout { header, gpus, occupied, slots }),
        c_struct!("gpuslice_lock_file" => LockLayout { header }),
    ]
}

/// What a define must be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Number(u64),
    Text(String),
}

/// `GPUSLICE_ENV_X`: the name of a variable the shim reads.
fn variable(name: &str) -> Value {
    assert!(
        SHIM_VARIABLES.contains(&name),
        "{name} is not a variable the shim reads"
    );
    Value::Text(name.to_owned())
}

fn n(value: usize) -> Value {
    Value::Number(value as u64)
}

/// What each define of the header must be, from the Rust side.
fn defines() -> BTreeMap<&'static str, Value> {
    let magic = |m: [u8; 8]| Value::Text(String::from_utf8(m.to_vec()).unwrap());
    let raw = RawLimits {
        memory_limit_bytes: AtomicU64::new(0),
        compute_share_permille: AtomicU32::new(0),
        compute_limit_permille: AtomicU32::new(0),
        priority: AtomicU32::new(0),
        reserved: Default::default(),
    };
    Limits::default().store(&raw);
    let priority = |p| Value::Number(Priority::to_raw(p).into());
    BTreeMap::from([
        ("GPUSLICE_ENV_TENANT", variable("GPUSLICE_TENANT")),
        (
            "GPUSLICE_ENV_MEMORY_LIMIT",
            variable("GPUSLICE_MEMORY_LIMIT"),
        ),
        (
            "GPUSLICE_ENV_COMPUTE_SHARE",
            variable("GPUSLICE_COMPUTE_SHARE"),
        ),
        (
            "GPUSLICE_ENV_COMPUTE_LIMIT",
            variable("GPUSLICE_COMPUTE_LIMIT"),
        ),
        ("GPUSLICE_ENV_PRIORITY", variable("GPUSLICE_PRIORITY")),
        ("GPUSLICE_ENV_DIR", variable("GPUSLICE_DIR")),
        ("GPUSLICE_ENV_LOG", variable("GPUSLICE_LOG")),
        ("GPUSLICE_ENV_TRACE", variable("GPUSLICE_TRACE")),
        ("GPUSLICE_DEFAULT_DIR", Value::Text(DEFAULT_DIR.into())),
        (
            "GPUSLICE_PINNED_TENANT_FILE",
            Value::Text(PINNED_TENANT_FILE.into()),
        ),
        (
            "GPUSLICE_LAYOUT_VERSION",
            Value::Number(LAYOUT_VERSION.into()),
        ),
        ("GPUSLICE_QUOTA_MAGIC", magic(QUOTA_MAGIC)),
        ("GPUSLICE_USAGE_MAGIC", magic(USAGE_MAGIC)),
        ("GPUSLICE_LOCK_MAGIC", magic(LOCK_MAGIC)),
        ("GPUSLICE_MAGIC_LEN", n(QUOTA_MAGIC.len())),
        ("GPUSLICE_MAX_GPUS", n(MAX_GPUS)),
        ("GPUSLICE_MAX_SLOTS", n(MAX_SLOTS)),
        ("GPUSLICE_BITMAP_WORDS", n(BITMAP_WORDS)),
        ("GPUSLICE_HEADER_SIZE", n(HEADER_SIZE)),
        ("GPUSLICE_QUOTA_TABLE_OFFSET", n(QUOTA_TABLE_OFFSET)),
        ("GPUSLICE_QUOTA_ENTRY_SIZE", n(QUOTA_ENTRY_SIZE)),
        ("GPUSLICE_QUOTA_FILE_SIZE", n(QUOTA_FILE_SIZE)),
        ("GPUSLICE_USAGE_TABLE_OFFSET", n(USAGE_TABLE_OFFSET)),
        ("GPUSLICE_USAGE_ENTRY_SIZE", n(USAGE_ENTRY_SIZE)),
        ("GPUSLICE_USAGE_BITMAP_OFFSET", n(USAGE_BITMAP_OFFSET)),
        ("GPUSLICE_USAGE_SLOT_OFFSET", n(USAGE_SLOT_OFFSET)),
        ("GPUSLICE_USAGE_SLOT_SIZE", n(USAGE_SLOT_SIZE)),
        ("GPUSLICE_USAGE_FILE_SIZE", n(USAGE_FILE_SIZE)),
        ("GPUSLICE_LOCK_FILE_SIZE", n(LOCK_FILE_SIZE)),
        (
            "GPUSLICE_LOCK_QUOTA_UPDATE",
            Value::Number(lock_bytes::QUOTA_UPDATE),
        ),
        (
            "GPUSLICE_LOCK_GPU_TABLE",
            Value::Number(lock_bytes::GPU_TABLE),
        ),
        (
            "GPUSLICE_LOCK_RUN_ENTRY",
            Value::Number(lock_bytes::RUN_ENTRY),
        ),
        (
            "GPUSLICE_LOCK_RUN_MEMBERS",
            Value::Number(lock_bytes::RUN_MEMBERS),
        ),
        ("GPUSLICE_LOCK_SLOTS", Value::Number(lock_bytes::SLOTS)),
        (
            "GPUSLICE_MEMORY_UNLIMITED",
            Value::Number(raw.memory_limit_bytes.into_inner()),
        ),
        ("GPUSLICE_PRIORITY_UNSET", priority(None)),
        ("GPUSLICE_PRIORITY_LOW", priority(Some(Priority::Low))),
        ("GPUSLICE_PRIORITY_NORMAL", priority(Some(Priority::Normal))),
        ("GPUSLICE_PRIORITY_HIGH", priority(Some(Priority::High))),
        ("GPUSLICE_GPU_EMPTY", Value::Number(GPU_EMPTY.into())),
        (
            "GPUSLICE_GPU_REGISTERED",
            Value::Number(GPU_REGISTERED.into()),
        ),
        ("GPUSLICE_SLOT_FREE", Value::Number(SLOT_FREE.into())),
        ("GPUSLICE_SLOT_LIVE", Value::Number(SLOT_LIVE.into())),
    ])
}

/// The names of the header's `#define GPUSLICE_*` lines that have a value (not the include
/// guard).
fn defined_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix("#define "))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let name = words.next()?;
            (name.starts_with("GPUSLICE_") && words.next().is_some()).then(|| name.to_owned())
        })
        .collect()
}

/// A struct of the header as its text declares it.
#[derive(Debug, Default)]
struct Declared {
    /// The size the comment before it gives, if it gives one.
    claimed_size: Option<u64>,
    /// (field, the offset a comment gives it), in declaration order.
    fields: Vec<(String, Option<u64>)>,
}

/// The number a comment gives as a size: `(1120 bytes)` or `64-byte`.
fn size_claim(comment: &str) -> Option<u64> {
    let words: Vec<&str> = comment.split_whitespace().collect();
    words.iter().enumerate().find_map(|(i, word)| {
        if let Some(number) = word.strip_suffix("-byte") {
            return number.parse().ok();
        }
        let next = words.get(i + 1)?;
        (next.starts_with("bytes)") && word.starts_with('('))
            .then(|| word[1..].parse().ok())
            .flatten()
    })
}

/// The number a field's comment starts with as an offset: `offset 96 = ...`, `offset 1088:`.
fn offset_claim(comment: &str) -> Option<u64> {
    let rest = comment.trim_start().strip_prefix("offset ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The last identifier of a declaration: `uint64_t occupied[GPUSLICE_BITMAP_WORDS]` ->
/// `occupied`.
fn declared_name(declaration: &str) -> String {
    let before_array = declaration.split('[').next().unwrap_or(declaration);
    before_array
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .rfind(|word| !word.is_empty())
        .unwrap_or_default()
        .to_owned()
}

/// Every `struct gpuslice_* { ... };` of the header, with its fields and the sizes and
/// offsets its comments claim. A comment after a field's `;` on the same line is that
/// field's; one on lines of its own belongs to the next field, or before `struct` to the
/// struct.
fn declared_structs(text: &str) -> BTreeMap<String, Declared> {
    let mut structs = BTreeMap::new();
    let mut code = String::new();
    let mut last_comment = String::new();
    let mut current: Option<(String, Declared)> = None;
    let mut pending_offset = None;
    // The field whose `;` is on the current line, if any.
    let mut field_on_line: Option<usize> = None;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("/*") {
            let end = after.find("*/").expect("an unterminated comment");
            let comment = &after[..end];
            rest = &after[end + 2..];
            if let Some((_, declared)) = &mut current {
                let claim = offset_claim(comment);
                match field_on_line {
                    Some(i) => {
                        if claim.is_some() {
                            declared.fields[i].1 = claim;
                        }
                    }
                    None => pending_offset = claim,
                }
            } else {
                last_comment = comment.to_owned();
                code.clear();
            }
            continue;
        }
        rest = &rest[c.len_utf8()..];
        match c {
            '\n' => {
                field_on_line = None;
                code.push(' ');
            }
            '{' if current.is_none() => {
                let head = code.trim().to_owned();
                if let Some(name) = head.strip_prefix("struct gpuslice_") {
                    let declared = Declared {
                        claimed_size: size_claim(&last_comment),
                        fields: Vec::new(),
                    };
                    current = Some((format!("gpuslice_{name}"), declared));
                }
                code.clear();
            }
            '}' => {
                if let Some((name, declared)) = current.take() {
                    structs.insert(name, declared);
                }
                code.clear();
            }
            ';' => {
                if let Some((_, declared)) = &mut current {
                    declared
                        .fields
                        .push((declared_name(&code), pending_offset.take()));
                    field_on_line = Some(declared.fields.len() - 1);
                }
                code.clear();
                last_comment.clear();
            }
            c => code.push(c),
        }
    }
    structs
}

/// Compiles `program` (which includes the header) and returns what it prints.
fn compile_and_run(program: &str, dir: &Path) -> String {
    let source = dir.join("check.c");
    let binary = dir.join("check");
    std::fs::write(&source, program).unwrap();
    let status = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("run cc (a C compiler is needed to check include/gpuslice.h)");
    assert!(status.success(), "include/gpuslice.h does not compile");
    let output = Command::new(&binary).output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_header_compiles_alone_without_padding() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("alone.c");
    std::fs::write(
        &source,
        format!("#include \"{}\"\n", header_path().display()),
    )
    .unwrap();
    for std in ["-std=c11", "-std=c17"] {
        let status = Command::new("cc")
            .args([std, "-Wall", "-Wextra", "-Wpadded", "-Werror", "-c", "-o"])
            .arg(dir.path().join("alone.o"))
            .arg(&source)
            .status()
            .expect("run cc (a C compiler is needed to check include/gpuslice.h)");
        assert!(status.success(), "include/gpuslice.h ({std}, -Wpadded)");
    }
}

#[test]
fn every_define_of_the_header_is_what_the_layout_says() {
    let text = header_text();
    let wanted = defines();
    let names = defined_names(&text);
    for name in &names {
        assert!(
            wanted.contains_key(name.as_str()),
            "include/gpuslice.h defines {name}, which this test does not check: add it to defines()"
        );
    }
    for name in wanted.keys() {
        assert!(
            names.iter().any(|n| n == name),
            "include/gpuslice.h lacks {name}"
        );
    }
    for variable in SHIM_VARIABLES {
        let define = format!("GPUSLICE_ENV_{}", &variable["GPUSLICE_".len()..]);
        assert!(
            names.contains(&define),
            "include/gpuslice.h names no {variable}"
        );
    }

    let mut program = format!(
        "#include <stdio.h>\n#include \"{}\"\nint main(void) {{\n",
        header_path().display()
    );
    for (name, value) in &wanted {
        program.push_str(&match value {
            Value::Number(_) => {
                format!("  printf(\"%llu\\n\", (unsigned long long)({name}));\n")
            }
            Value::Text(_) => format!("  printf(\"%s\\n\", {name});\n"),
        });
    }
    program.push_str("  return 0;\n}\n");
    let dir = tempfile::tempdir().unwrap();
    let output = compile_and_run(&program, dir.path());
    let mut lines = output.lines();
    for (name, value) in &wanted {
        let line = lines.next().unwrap_or_else(|| panic!("no line for {name}"));
        let got = match value {
            Value::Number(_) => Value::Number(line.parse().unwrap()),
            Value::Text(_) => Value::Text(line.to_owned()),
        };
        assert_eq!(&got, value, "{name} in include/gpuslice.h");
    }
}

#[test]
fn every_struct_and_field_of_the_header_sits_where_the_layout_has_it() {
    let text = header_text();
    let declared = declared_structs(&text);
    let ours = structs();
    let names: Vec<&str> = ours.iter().map(|s| s.name).collect();
    assert_eq!(
        declared.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted
        },
        "the header's structs and this test's"
    );

    let mut program = format!(
        "#include <stdio.h>\n#include \"{}\"\nint main(void) {{\n",
        header_path().display()
    );
    for s in &ours {
        let name = s.name;
        program.push_str(&format!("  printf(\"%zu\\n\", sizeof(struct {name}));\n"));
        for (field, _, _) in &s.fields {
            program.push_str(&format!(
                "  printf(\"%zu %zu\\n\", offsetof(struct {name}, {field}), \
                 sizeof(((struct {name} *)0)->{field}));\n"
            ));
        }
    }
    program.push_str("  return 0;\n}\n");
    let dir = tempfile::tempdir().unwrap();
    let output = compile_and_run(&program, dir.path());
    let mut lines = output.lines();

    for s in &ours {
        let name = s.name;
        let c = &declared[name];
        let fields: Vec<&str> = s.fields.iter().map(|(f, _, _)| *f).collect();
        let c_fields: Vec<&str> = c.fields.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(c_fields, fields, "the fields of struct {name}, in order");

        let size: usize = lines.next().unwrap().parse().unwrap();
        assert_eq!(size, s.size, "sizeof(struct {name})");
        if let Some(claimed) = c.claimed_size {
            assert_eq!(
                claimed, s.size as u64,
                "the size a comment gives struct {name}"
            );
        }
        for ((field, offset, field_size), (_, claimed)) in s.fields.iter().zip(&c.fields) {
            let line = lines.next().unwrap();
            let (c_offset, c_size) = line.split_once(' ').unwrap();
            assert_eq!(
                c_offset.parse::<usize>().unwrap(),
                *offset,
                "offsetof(struct {name}, {field})"
            );
            assert_eq!(
                c_size.parse::<usize>().unwrap(),
                *field_size,
                "the size of {name}.{field}"
            );
            if let Some(claimed) = claimed {
                assert_eq!(
                    *claimed, *offset as u64,
                    "the offset a comment gives {name}.{field}"
                );
            }
        }
    }
}

#[test]
fn the_header_reader_finds_what_it_is_shown() {
    let text = "/** One thing (16 bytes). */\nstruct gpuslice_x {\n  uint64_t a; /* offset 0 */\n  \
                /* offset 8: the second; it says a; b */\n  uint8_t b[8];\n};\n\
                #define GPUSLICE_Y 3u\n#define GPUSLICE_H\n";
    let declared = declared_structs(text);
    let x = &declared["gpuslice_x"];
    assert_eq!(x.claimed_size, Some(16));
    assert_eq!(
        x.fields,
        [("a".to_owned(), Some(0)), ("b".to_owned(), Some(8))]
    );
    assert_eq!(defined_names(text), ["GPUSLICE_Y"]);
    assert_eq!(size_claim("The 64-byte header"), Some(64));
    assert_eq!(size_claim("A usage file (689344 bytes)."), Some(689_344));
    assert_eq!(size_claim("no size here"), None);
}

//! Wizer-style instrumentation: export every defined memory and mutable global so the host can
//! read and write a quiescent instance's whole state, and turn the start function into an
//! export so that a restore never reruns it.

use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef};

/// Export name prefix for memory `i`: `__continuum_memory{i}`.
pub const EXPORT_MEMORY_PREFIX: &str = "__continuum_memory";
/// Export name prefix for mutable global `i` (its index in the global index space).
pub const EXPORT_GLOBAL_PREFIX: &str = "__continuum_global";
/// The former start function, for the host to call on a fresh instantiation only.
pub const EXPORT_START: &str = "__continuum_start";

/// Why a module cannot be instrumented.
#[derive(Debug, thiserror::Error)]
pub enum InstrumentError {
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    #[error(
        "this is a Wasm component (component model); continuum runs core modules built for wasm32-wasip1"
    )]
    ComponentModel,
    #[error("module is not supported: {0}")]
    Unsupported(String),
}

/// Return the instrumented module. The input is validated first, so that a broken module is
/// refused with the validator's message rather than failing later in the engine.
pub fn instrument(wasm: &[u8]) -> Result<Vec<u8>, InstrumentError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(InstrumentError::NotWasm(
            "it does not start with the Wasm magic bytes \\0asm".into(),
        ));
    }
    if wasm[4..8] != [1, 0, 0, 0] {
        return Err(InstrumentError::ComponentModel);
    }
    wasmparser::Validator::new()
        .validate_all(wasm)
        .map_err(|e| InstrumentError::NotWasm(e.to_string()))?;

    let unsupported = |why: String| Err(InstrumentError::Unsupported(why));
    let parse = |e: wasmparser::BinaryReaderError| InstrumentError::NotWasm(e.to_string());
    let mut sections: Vec<(u8, std::ops::Range<usize>)> = Vec::new();
    let mut exports: Vec<(String, ExportKind, u32)> = Vec::new();
    let mut have_exports = false;
    let (mut globals, mut memories) = (0u32, 0u32);
    let mut mutable_globals = Vec::new();
    let mut defined_memories = Vec::new();
    let mut start = None;

    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(parse)?;
        match &payload {
            Payload::ImportSection(r) => {
                for import in r.clone().into_imports() {
                    let import = import.map_err(parse)?;
                    match import.ty {
                        TypeRef::Global(g) if g.mutable => {
                            return unsupported(format!(
                                "it imports the mutable global {}::{}, whose state would live outside the snapshot",
                                import.module, import.name
                            ));
                        }
                        TypeRef::Global(_) => globals += 1,
                        TypeRef::Memory(_) => {
                            return unsupported(format!(
                                "it imports its memory ({}::{}); a component must define its own",
                                import.module, import.name
                            ));
                        }
                        TypeRef::Table(_) => {
                            return unsupported(format!(
                                "it imports a table ({}::{})",
                                import.module, import.name
                            ));
                        }
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(r) => {
                for m in r.clone() {
                    let m = m.map_err(parse)?;
                    if m.shared || m.memory64 {
                        return unsupported(
                            "shared and 64-bit memories cannot be checkpointed yet".into(),
                        );
                    }
                    defined_memories.push(memories);
                    memories += 1;
                }
            }
            Payload::GlobalSection(r) => {
                for g in r.clone() {
                    if g.map_err(parse)?.ty.mutable {
                        mutable_globals.push(globals);
                    }
                    globals += 1;
                }
            }
            Payload::ExportSection(r) => {
                have_exports = true;
                for e in r.clone() {
                    let e = e.map_err(parse)?;
                    let kind = match e.kind {
                        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                        ExternalKind::Table => ExportKind::Table,
                        ExternalKind::Memory => ExportKind::Memory,
                        ExternalKind::Global => ExportKind::Global,
                        ExternalKind::Tag => ExportKind::Tag,
                    };
                    if e.name.starts_with("__continuum_") {
                        return unsupported(format!(
                            "it already exports the reserved name {}",
                            e.name
                        ));
                    }
                    exports.push((e.name.to_string(), kind, e.index));
                }
            }
            Payload::StartSection { func, .. } => start = Some(*func),
            Payload::CodeSectionEntry(body) => {
                // Tables are not in snapshots: refuse code that changes them at run time.
                let mut ops = body.get_operators_reader().map_err(parse)?;
                while !ops.eof() {
                    match ops.read().map_err(parse)? {
                        Operator::TableSet { .. }
                        | Operator::TableGrow { .. }
                        | Operator::TableFill { .. }
                        | Operator::TableCopy { .. }
                        | Operator::TableInit { .. } => {
                            return unsupported(
                                "it changes a table at run time (table.set/grow/fill/copy/init), and tables are not checkpointed yet"
                                    .into(),
                            );
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            sections.push((id, range.start as usize..range.end as usize));
        }
    }
    if !have_exports {
        return unsupported("it exports nothing, so it has no continuum ABI".into());
    }

    for i in defined_memories {
        exports.push((format!("{EXPORT_MEMORY_PREFIX}{i}"), ExportKind::Memory, i));
    }
    for i in mutable_globals {
        exports.push((format!("{EXPORT_GLOBAL_PREFIX}{i}"), ExportKind::Global, i));
    }
    if let Some(f) = start {
        exports.push((EXPORT_START.to_string(), ExportKind::Func, f));
    }

    let mut out = Module::new();
    for (id, range) in sections {
        match id {
            7 => {
                let mut section = ExportSection::new();
                for (name, kind, index) in &exports {
                    section.export(name, *kind, *index);
                }
                out.section(&section);
            }
            8 => {} // start: now an export
            _ => {
                out.section(&RawSection {
                    id,
                    data: &wasm[range],
                });
            }
        }
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_state_and_drops_start() {
        let wasm = wat::parse_str(
            r#"(module
                (global $a (mut i32) (i32.const 1))
                (global $c i32 (i32.const 2))
                (global $b (mut i64) (i64.const 3))
                (memory 1)
                (func $init (global.set $a (i32.const 5)))
                (start $init)
                (export "memory" (memory 0)))"#,
        )
        .unwrap();
        let out = instrument(&wasm).unwrap();
        wasmparser::Validator::new().validate_all(&out).unwrap();
        let mut names = Vec::new();
        let mut has_start = false;
        for p in Parser::new(0).parse_all(&out) {
            match p.unwrap() {
                Payload::ExportSection(r) => {
                    names = r.into_iter().map(|e| e.unwrap().name.to_string()).collect()
                }
                Payload::StartSection { .. } => has_start = true,
                _ => {}
            }
        }
        assert!(!has_start);
        assert_eq!(
            names,
            [
                "memory",
                "__continuum_memory0",
                "__continuum_global0",
                "__continuum_global2",
                "__continuum_start"
            ]
        );
    }

    #[test]
    fn refuses_bad_input_with_reasons() {
        let err = instrument(b"hello world, not wasm")
            .unwrap_err()
            .to_string();
        assert!(err.contains("magic"), "{err}");
        let err = instrument(b"\0asm\x0d\0\x01\0").unwrap_err().to_string();
        assert!(err.contains("component model"), "{err}");
        let mut truncated =
            wat::parse_str("(module (memory 1) (export \"m\" (memory 0)))").unwrap();
        truncated.pop();
        let err = instrument(&truncated).unwrap_err().to_string();
        assert!(err.starts_with("not a WebAssembly module"), "{err}");
        let tables = wat::parse_str(
            r#"(module (table 1 funcref) (func (table.set 0 (i32.const 0) (ref.null func)))
                (export "t" (table 0)))"#,
        )
        .unwrap();
        let err = instrument(&tables).unwrap_err().to_string();
        assert!(err.contains("table"), "{err}");
    }
}

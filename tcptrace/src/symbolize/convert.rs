//! blazesym's results as frames: the inlined-frame policy lives here.
//!
//! blazesym reports an address inside inlined code as the function it was inlined into (`f`,
//! with the line of the inlined call) plus the inlined calls in nesting order (`g`, with the
//! line of its call to `h`; `h`, with the line of the address). They become separate frames,
//! innermost first like the stack they belong to: `h`, `g`, `f`, all with the same address and
//! module.

use blazesym::symbolize::{CodeInfo, Sym, Symbolized};

use super::{cache::Frames, frame::Frame};

/// The frames of one address; `None` when nothing covers it.
pub fn frames(addr: u64, symbolized: &Symbolized<'_>) -> Option<Frames> {
    let Symbolized::Sym(sym) = symbolized else { return None };
    let Sym { name, module, code_info, inlined, .. } = sym;
    let module = module.as_ref().map(|module| module.to_string_lossy().into_owned());
    let frame = |name: &str, code_info: Option<&CodeInfo<'_>>| {
        let (file, line) = match code_info {
            Some(code_info) => {
                (Some(code_info.to_path().to_string_lossy().into_owned()), code_info.line)
            }
            None => (None, None),
        };
        Frame { addr, symbol: Some(name.to_owned()), file, line, module: module.clone() }
    };
    let frames = inlined
        .iter()
        .rev()
        .map(|inlined| frame(&inlined.name, inlined.code_info.as_ref()))
        .chain([frame(name, code_info.as_deref())])
        .collect();
    Some(frames)
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, ffi::OsStr, path::Path};

    use blazesym::symbolize::{InlinedFn, Reason};

    use super::*;

    fn code_info(file: &'static str, line: u32) -> CodeInfo<'static> {
        CodeInfo {
            dir: Some(Cow::Borrowed(Path::new("/src"))),
            file: Cow::Borrowed(OsStr::new(file)),
            line: Some(line),
            column: None,
            _non_exhaustive: (),
        }
    }

    fn sym(inlined: Vec<InlinedFn<'static>>) -> Symbolized<'static> {
        Symbolized::Sym(Sym {
            name: Cow::Borrowed("app::handler"),
            module: Some(Cow::Borrowed(OsStr::new("/usr/bin/app"))),
            addr: 0x1000,
            offset: 0x10,
            size: Some(0x100),
            code_info: Some(Box::new(code_info("handler.rs", 10))),
            inlined: inlined.into_boxed_slice(),
            _non_exhaustive: (),
        })
    }

    fn inlined(name: &'static str, code_info: Option<CodeInfo<'static>>) -> InlinedFn<'static> {
        InlinedFn { name: Cow::Borrowed(name), code_info, _non_exhaustive: () }
    }

    fn shown(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(Frame::display).collect()
    }

    #[test]
    fn a_plain_symbol_is_one_frame() {
        let frames = frames(0x5555_0000_1010, &sym(vec![])).unwrap();
        assert_eq!(
            &*frames,
            [Frame {
                addr: 0x5555_0000_1010,
                symbol: Some("app::handler".to_owned()),
                file: Some("/src/handler.rs".to_owned()),
                line: Some(10),
                module: Some("/usr/bin/app".to_owned()),
            }]
        );
    }

    #[test]
    fn inlined_calls_become_frames_innermost_first() {
        let symbolized = sym(vec![
            inlined("app::db::checkout", Some(code_info("db.rs", 20))),
            inlined("app::db::open", Some(code_info("open.rs", 30))),
            inlined("app::db::no_line_info", None),
        ]);
        let frames = frames(0x1010, &symbolized).unwrap();
        assert_eq!(
            shown(&frames),
            [
                "app::db::no_line_info",
                "app::db::open (open.rs:30)",
                "app::db::checkout (db.rs:20)",
                "app::handler (handler.rs:10)",
            ]
        );
        assert!(frames.iter().all(|frame| frame.addr == 0x1010));
        assert!(frames.iter().all(|frame| frame.module.as_deref() == Some("/usr/bin/app")));
    }

    #[test]
    fn an_unknown_address_has_no_frames() {
        assert_eq!(frames(0x7f00_0000_0000, &Symbolized::Unknown(Reason::UnknownAddr)), None);
    }
}

//! The JSON of a whole run, written here so the shell formats none of it:
//!
//! - `meta --json FILE --date D --host H ...`: what the run ran on (every value as given,
//!   escaped here), with `--quick` as a flag.
//! - `results --run-dir DIR --out FILE`: `results.json`, the parts each workload wrote in DIR
//!   (`meta.json`, `fs.json`, `find-cold.json` + `find-warm.json` from hyperfine,
//!   `memory.json`, `http.json`, `http_vt0.json`, `deploy.json`); a part not run is `null`.

use std::fs;
use std::path::{Path, PathBuf};

use switchfs::json::json_str;

use crate::args::Args;
use crate::{Res, ctx};

/// `meta`: the description of the run.
pub(crate) fn meta(args: &Args) -> Res<()> {
    let text = |key: &str| -> Res<String> { Ok(json_str(args.req(key)?)) };
    let json = format!(
        "{{\"load_at_start\":{},\"date\":{},\"host\":{},\"cpu\":{},\"cores\":{},\"memory\":{},\
         \"kernel\":{},\"fs\":{},\"git\":{},\"bindfs\":{},\"quick\":{},\"rounds\":{},\"switches\":{}}}",
        text("load")?,
        text("date")?,
        text("host")?,
        text("cpu")?,
        args.num("cores", 0)?,
        text("memory")?,
        text("kernel")?,
        text("fs")?,
        text("git")?,
        text("bindfs")?,
        args.flag("quick"),
        args.num("rounds", 0)?,
        args.num("switches", 0)?,
    );
    let out = PathBuf::from(args.req("json")?);
    fs::write(&out, json).map_err(ctx(out.display()))
}

/// The JSON in `dir/name`, or `null` when that part did not run (no file, or empty).
fn part(dir: &Path, name: &str) -> Res<String> {
    match fs::read_to_string(dir.join(name)) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) => Ok("null".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("null".into()),
        Err(e) => Err(format!("{}: {e}", dir.join(name).display())),
    }
}

/// `results`: every part in one `results.json`.
pub(crate) fn assemble(args: &Args) -> Res<()> {
    let dir = PathBuf::from(args.req("run-dir")?);
    let (cold, warm) = (part(&dir, "find-cold.json")?, part(&dir, "find-warm.json")?);
    let find = if cold == "null" {
        "null".to_string()
    } else {
        format!("{{\"cold\":{cold},\"warm\":{warm}}}")
    };
    let json = format!(
        "{{\"meta\":{},\"fs\":{},\"find_crosscheck_hyperfine\":{find},\"memory\":{},\"http\":{},\
         \"http_validate_timestamps_0\":{},\"deploy_under_load\":{}}}\n",
        part(&dir, "meta.json")?,
        part(&dir, "fs.json")?,
        part(&dir, "memory.json")?,
        part(&dir, "http.json")?,
        part(&dir, "http_vt0.json")?,
        part(&dir, "deploy.json")?,
    );
    let out = PathBuf::from(args.req("out")?);
    fs::write(&out, json).map_err(ctx(out.display()))
}

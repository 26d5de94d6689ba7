//! Writing the report's files: pages with the shared navigation, and
//! any file under a temporary name first.

use std::path::{Path, PathBuf};

use crate::error::ReportError;
use crate::html::{self, NavItem};

/// Writes pages into the report folder and remembers them.
pub struct Writer {
    pub(crate) out: PathBuf,
    pub(crate) nav: Vec<NavItem>,
    pub(crate) footer: String,
    pub(crate) pages: Vec<String>,
}

impl Writer {
    /// Writes page `file` (a name in the report folder).
    pub fn page(
        &mut self,
        file: &str,
        title: &str,
        current: &str,
        body: &str,
    ) -> Result<(), ReportError> {
        let text = html::page(title, &self.nav, current, body, &self.footer);
        write_file(&self.out.join(file), text.as_bytes())?;
        self.pages.push(file.to_string());
        Ok(())
    }
}

/// Writes `bytes` to `path` under a temporary name, then renames it.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| ReportError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ReportError::io(path, e))
}

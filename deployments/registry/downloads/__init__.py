"""Download engine for model weights: pin a Hub revision, choose files, fetch them resumably and verified, publish.

Pure Python, no Django: the job runner calls these functions, reports :class:`Progress` and turns a
:class:`DownloadError` (``cause``, ``message``, ``next_step``, ``field``) into the job's state.

One module per step, each importing (at run time) only the ones listed before it:

* :mod:`.hub`: who the requests say they come from, timeouts, the retry policy;
* :mod:`.errors`: :class:`DownloadError`, :class:`Cancelled`, and the Hub's, network's and disk's errors as such;
* :mod:`.progress`: :class:`Progress` and the meter that counts bytes, reports and polls for a cancel;
* :mod:`.staging`: the staging directory (``.part`` files, the verified sidecar, the lock) and durable writes;
* :mod:`.snapshot`: :func:`resolve` a revision to a :class:`RepoSnapshot` of :class:`RemoteFile`;
* :mod:`.selection`: :func:`choose_files`, :func:`required_space`, :func:`check_space`;
* :mod:`.verify`: the hashes a file is checked against, :func:`hash_directory`, :func:`validate_layout`;
* :mod:`.transfer`: :func:`download`, parallel, resumable HTTP Range requests;
* :mod:`.publishing`: :func:`publish` writes ``manifest.json``, removes the sidecar, the lock and any leftovers,
  and renames the staging directory to its final name in one ``rename``: a model directory is complete or
  absent, never half-written; :func:`discard` deletes a staging directory.

A test that changes a setting patches the module that reads it (``hub.BACKOFF_BASE_S``, ``transfer.get_session``,
``publishing._rename_noreplace``): the names below are copies, patching them changes nothing.
"""

from deployments.registry.downloads.errors import Cancelled, DownloadError
from deployments.registry.downloads.progress import Progress, progress_dict
from deployments.registry.downloads.publishing import _rename_noreplace as _rename_noreplace
from deployments.registry.downloads.publishing import discard, publish
from deployments.registry.downloads.selection import check_space, choose_files, required_space
from deployments.registry.downloads.snapshot import RemoteFile, RepoSnapshot, resolve
from deployments.registry.downloads.staging import _locked as _locked
from deployments.registry.downloads.transfer import download
from deployments.registry.downloads.verify import hash_directory, validate_layout
from deployments.units import GB as GB

__all__ = [
    "Cancelled",
    "DownloadError",
    "Progress",
    "RemoteFile",
    "RepoSnapshot",
    "check_space",
    "choose_files",
    "discard",
    "download",
    "hash_directory",
    "progress_dict",
    "publish",
    "required_space",
    "resolve",
    "validate_layout",
]

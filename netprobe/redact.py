"""Keep shared keys inside the process.

Two layers. By name: any setting whose name ends in `key`, at any depth, is
shown as "<redacted>" wherever a config is printed or recorded (HEADER
records, check-config, config errors). By value: every key the config
supplies (and the contents of a `*key_file`) is registered as it is loaded;
record lines, syslog messages and log lines are scrubbed of those byte
strings before they leave, so a key quoted by some error text deep in a
probe cannot reach a file or a collector either.

Values shorter than MIN_SCRUB characters are redacted by name only: scrubbing
a three-letter word out of every line would garble the output (the peer side
refuses keys that short anyway).
"""
import json
import logging
import threading

REDACTED = "<redacted>"
MIN_SCRUB = 8
MAX_KEY_FILE = 64 * 1024           # bytes read from a key file to learn its key

_secrets = set()
_lock = threading.Lock()
_factory_installed = False


def is_secret_name(name):
    """A setting that holds a key: its name ends in `key` (key, api_key, [peer.x].key ...)."""
    return isinstance(name, str) and name.lower().endswith("key")


def redact(obj):
    """A copy of a config document (dicts, lists, scalars) with every non-empty secret replaced."""
    if isinstance(obj, dict):
        return {k: REDACTED if is_secret_name(k) and v not in ("", None) else redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def register(value):
    """Remember a key so that scrub() removes it from text leaving the process."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return
    value = value.strip()
    if len(value) < MIN_SCRUB:
        return
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    with _lock:
        _secrets.update(forms)
    _install_log_scrubber()


def register_file(path):
    """Register the key a key file holds; an unreadable file is left for its user to report."""
    try:
        with open(path, "rb") as fh:
            register(fh.read(MAX_KEY_FILE))
    except (OSError, TypeError, ValueError):
        pass


def register_config(obj):
    """Register every secret of a config document, and the contents of every `*key_file`."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_secret_name(k):
                register(v)
            elif isinstance(k, str) and k.lower().endswith("key_file") and isinstance(v, str) and v:
                register_file(v)
            else:
                register_config(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            register_config(v)


def scrub(text):
    """`text` with every registered key replaced by <redacted>."""
    if not _secrets or not isinstance(text, str):
        return text
    for s in sorted(_secrets, key=len, reverse=True):     # longest first: a key containing another
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def scrub_obj(obj):
    """scrub() applied to every string in a JSON-like value."""
    if not _secrets:
        return obj
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {scrub_obj(k): scrub_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_obj(v) for v in obj]
    return obj


def _install_log_scrubber():
    """Scrub every log record this process creates, whichever handler prints it."""
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        _factory_installed = True
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):      # a bad format string: logging reports it itself
            return record
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)

"""A checkpoint's zip and pickle checked against what the file carries, before ``torch.load`` reads either.

    scan_checkpoint("ckpt.pt")      # CheckpointError naming the problem, or None

``torch.load(weights_only=True)`` runs no code, but a small file can still ask it for gigabytes or minutes:
a zip entry that inflates (a zip bomb), a storage that claims more bytes than its entry holds, a tensor whose
sizes and strides reach past its storage (stride 0 with a huge size: a view nothing backs), or a pickle whose
shared references make a tuple key that takes a minute to hash. This reads the zip directory with the
stdlib, then walks the pickle's opcodes (``pickletools.genops``: nothing is executed or imported) with a
small stack machine that keeps only what the checks need, each container counted once however often it is
referenced.
"""
from __future__ import annotations

import math
import pickletools
import zipfile
from pathlib import Path

from edgekit.errors import CheckpointError

MAX_PICKLE_BYTES = 256 << 20  # data.pkl: nanoGPT's gpt2-xl checkpoint (weights + AdamW) has ~0.1 MB of it
MAX_OPCODES = 20_000_000  # ~10 opcodes a tensor: room for a million tensors
MAX_ENTRIES = 1_000_000  # zip entries (one a storage)
MAX_VALUES = 10_000_000  # values the pickle's data expands to, shared references counted every time they occur
MAX_KEY_VALUES = 10_000  # values inside one dict key (a key is hashed: a nested tuple key costs its whole size)
# storage type -> bytes per element (UntypedStorage counts bytes)
ITEM_BYTES = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
              "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
              "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1, "QInt8Storage": 1,
              "QUInt8Storage": 1, "QInt32Storage": 4, "Float8_e4m3fnStorage": 1, "Float8_e5m2Storage": 1}


class _Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _Storage:
    def __init__(self, key: str, numel: int, item: int):
        self.key, self.numel, self.item = key, numel, item


class _Node:
    """A container built by the pickle: its children (for counting), and whether it is a tuple."""

    __slots__ = ("children", "kind", "keys")

    def __init__(self, kind: str, children=None):
        self.kind, self.children, self.keys = kind, list(children or ()), []


def _fail(path, msg: str):
    raise CheckpointError(f"refusing checkpoint {path}: {msg}")


def _expanded(root, path) -> dict:
    """Values each node expands to (shared references counted each time, saturating past MAX_VALUES); a
    cycle is refused. Iterative: a deep pickle cannot exhaust the stack."""
    size: dict[int, int] = {}
    stack, on_path = [(root, False)], set()
    while stack:
        node, done = stack.pop()
        if not isinstance(node, _Node):
            continue
        nid = id(node)
        if done:
            on_path.discard(nid)
            size[nid] = min(MAX_VALUES + 1, 1 + sum(size.get(id(c), 1) if isinstance(c, _Node) else 1
                                                    for c in node.children))
            continue
        if nid in size:
            continue
        if nid in on_path:
            _fail(path, "its pickle holds a container that contains itself")
        on_path.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in node.children if isinstance(c, _Node) and id(c) not in size)
    return size


def _check_tensor(path, args, entries: dict) -> None:
    """``_rebuild_tensor_v2(storage, offset, size, stride, ...)``: the view must lie inside its storage, the
    storage inside its zip entry."""
    if not args or not isinstance(args[0], _Storage):
        _fail(path, "a tensor is rebuilt from something that is not a storage")
    st = args[0]
    ints = lambda v: isinstance(v, _Node) and v.kind == "tuple" and all(isinstance(x, int) for x in v.children)  # noqa: E731
    if len(args) < 4 or not isinstance(args[1], int) or not ints(args[2]) or not ints(args[3]):
        _fail(path, "a tensor's offset, sizes or strides are not integers")
    offset, sizes, strides = args[1], args[2].children, args[3].children
    if offset < 0 or len(sizes) != len(strides) or any(s < 0 for s in sizes) or any(s < 0 for s in strides):
        _fail(path, f"a tensor has sizes {sizes[:8]} and strides {strides[:8]} (negative or mismatched)")
    numel = math.prod(sizes)
    if numel > st.numel:
        _fail(path, f"a tensor of {numel:,} elements is a view of a storage of {st.numel:,} (stride 0 or overlapping "
                    "views: torch.save writes every element)")
    if numel and offset + sum((n - 1) * s for n, s in zip(sizes, strides)) + 1 > st.numel:
        _fail(path, f"a tensor reaches past its storage of {st.numel:,} elements")


class _Machine:
    """Just enough of the pickle machine for torch.save's output; anything else is refused."""

    def __init__(self, path, entries: dict, prefix: str):
        self.path, self.entries, self.prefix = path, entries, prefix
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict = {}
        self.storages: dict[str, _Storage] = {}

    def pop_mark(self) -> list:
        if not self.marks:
            _fail(self.path, "its pickle is malformed (no MARK)")
        at = self.marks.pop()
        items, self.stack[at:] = self.stack[at:], []
        return items

    def pop(self):
        if not self.stack:
            _fail(self.path, "its pickle is malformed (stack underflow)")
        return self.stack.pop()

    def persistent(self, pid):
        kids = pid.children if isinstance(pid, _Node) else ()
        if len(kids) != 5 or kids[0] != "storage" or not isinstance(kids[1], _Global) or not isinstance(kids[2], str) \
                or not isinstance(kids[4], int) or kids[4] < 0:
            _fail(self.path, "its pickle names a storage that is not ('storage', type, key, location, size)")
        item = ITEM_BYTES.get(kids[1].name)
        if item is None:
            _fail(self.path, f"storage type {kids[1].name[:40]!r} is not known")
        key, numel = kids[2], kids[4]
        entry = self.entries.get(f"{self.prefix}data/{key}")
        if entry is None:
            _fail(self.path, f"storage {key[:20]!r} has no data in the archive")
        if numel * item > entry.file_size:
            _fail(self.path, f"storage {key[:20]!r} claims {numel * item:,} bytes but its entry holds {entry.file_size:,}")
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, numel, item)
        return st

    def reduce(self, fn, args):
        name = fn.name if isinstance(fn, _Global) else ""
        arg = args.children if isinstance(args, _Node) else []
        if name.startswith("_rebuild_tensor"):
            _check_tensor(self.path, arg, self.entries)
        return _Node("object", arg)

    def run(self, data: bytes):
        n = 0
        for op, arg, _pos in pickletools.genops(data):
            n += 1
            if n > MAX_OPCODES:
                _fail(self.path, f"its pickle has more than {MAX_OPCODES:,} opcodes")
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                return self.pop()
            if name == "MARK":
                self.marks.append(len(self.stack))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                self.memo[arg] = self.stack[-1] if self.stack else _fail(self.path, "its pickle is malformed")
            elif name == "MEMOIZE":
                self.memo[len(self.memo)] = self.stack[-1] if self.stack else _fail(self.path, "its pickle is malformed")
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                if arg not in self.memo:
                    _fail(self.path, "its pickle reads a memo slot it never wrote")
                self.stack.append(self.memo[arg])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, gname = str(arg).partition(" ")
                else:
                    gname, module = self.pop(), self.pop()
                self.stack.append(_Global(str(module), str(gname)))
            elif name == "BINPERSID":
                self.stack.append(self.persistent(self.pop()))
            elif name in ("REDUCE", "NEWOBJ"):
                args = self.pop()
                self.stack.append(self.reduce(self.pop(), args))
            elif name == "BUILD":
                state = self.pop()
                if self.stack and isinstance(self.stack[-1], _Node):
                    self.stack[-1].children.append(state)
            elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET"):
                self.stack.append(_Node(name[6:].lower()))
            elif name == "EMPTY_TUPLE":
                self.stack.append(_Node("tuple"))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(name[-1])
                if len(self.stack) < k:
                    _fail(self.path, "its pickle is malformed (stack underflow)")
                items, self.stack[-k:] = self.stack[-k:], []
                self.stack.append(_Node("tuple", items))
            elif name in ("TUPLE", "LIST", "DICT", "FROZENSET"):
                items = self.pop_mark()
                node = _Node("tuple" if name in ("TUPLE", "FROZENSET") else name.lower(), items)
                if name == "DICT":
                    node.keys = items[0::2]
                self.stack.append(node)
            elif name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"):
                items = self.pop_mark() if name.endswith("S") else [self.pop()] if name == "APPEND" else \
                    [self.pop() for _ in range(2)][::-1]
                target = self.stack[-1] if self.stack else None
                if not isinstance(target, _Node):
                    _fail(self.path, f"its pickle applies {name} to a value that is not a container")
                target.children.extend(items)
                if name.startswith("SETITEM"):
                    target.keys.extend(items[0::2])
            elif name == "POP":
                self.pop()
            elif name == "POP_MARK":
                self.pop_mark()
            elif name == "DUP":
                self.stack.append(self.stack[-1] if self.stack else _fail(self.path, "its pickle is malformed"))
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                self.stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif op.arg is not None or name in ("BINFLOAT", "FLOAT", "INT", "LONG"):
                self.stack.append(arg)  # numbers, strings and bytes
            else:
                _fail(self.path, f"its pickle uses opcode {name}, which torch.save does not write")
        _fail(self.path, "its pickle has no STOP")


def scan_checkpoint(path: str | Path) -> None:
    """Refuse (CheckpointError) a checkpoint whose zip or pickle asks for more than the file carries."""
    path = Path(path)
    size = path.stat().st_size
    if not zipfile.is_zipfile(path):
        return  # torch's legacy (pre-1.6) format, or not a checkpoint: torch.load reports which
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_ENTRIES:
                _fail(path, f"its archive has {len(infos):,} entries (at most {MAX_ENTRIES:,})")
            if sum(i.file_size for i in infos) > size:
                _fail(path, f"its archive's entries add up to {sum(i.file_size for i in infos):,} bytes in a "
                            f"{size:,}-byte file (a zip bomb)")
            packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
            if packed:
                _fail(path, f"entry {packed[0][:60]!r} is compressed; torch.save stores entries uncompressed")
            pkl = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
            if len(pkl) != 1:
                return  # not torch.save's layout: torch.load reports it
            if pkl[0].file_size > MAX_PICKLE_BYTES:
                _fail(path, f"its data.pkl is {pkl[0].file_size:,} bytes (at most {MAX_PICKLE_BYTES:,})")
            data = z.read(pkl[0])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return  # unreadable: torch.load says so in its own words
    prefix = pkl[0].filename[: -len("data.pkl")]
    machine = _Machine(path, {i.filename: i for i in infos}, prefix)
    try:
        root = machine.run(data)
    except CheckpointError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, EOFError) as e:  # genops on a malformed pickle
        _fail(path, f"its pickle is malformed ({str(e)[:80]})")
    sizes = _expanded(root, path)
    for node in _containers(root):
        for key in node.keys:
            if isinstance(key, _Node) and sizes.get(id(key), 1) > MAX_KEY_VALUES:
                _fail(path, f"a dict key holds more than {MAX_KEY_VALUES:,} values (hashing it would take minutes)")
    if sizes.get(id(root), 1) > MAX_VALUES:
        _fail(path, f"its pickle expands to more than {MAX_VALUES:,} values (shared references)")


def _containers(root):
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if not isinstance(node, _Node) or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(node.children)

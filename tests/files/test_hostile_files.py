"""Files never run code: hostile and corrupt fxprune files, fxprune.load and the CLI.

Every payload below tries to create a marker file; the tests assert that it never exists and
that every refused file raises InputError (exit code 2 on the command line). A seeded mutation
fuzz over saved files (field edits, type swaps, wrong shapes, bad indices, huge sizes,
truncated and flipped bytes, injected names and targets) checks the same two properties, plus
that whatever loads is well formed (it runs on its saved example inputs).
"""

from __future__ import annotations

import copy
import io
import pathlib
import random

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.cli import app as cli
from fxprune.core.trace import EXAMPLE_INPUTS
from fxprune.errors import InputError
from fxprune.files.serialize import read
from fxprune.models.resnet_cifar import ResNetCifar
from fxprune.tools.fuzz.files import lies


class Tiny(nn.Module):
    """conv-bn-relu, a grouped conv, call_method, getattr(shape), flatten, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = self.dw(y).mean(dim=(2, 3)) * (x.shape[0] / x.size(0))
        return self.fc(torch.flatten(y, 1))


def _saved(tmp: pathlib.Path, model: nn.Module, x: torch.Tensor, name: str, **kw) -> dict:
    torch.manual_seed(0)
    path = tmp / f"{name}.pt"
    fxprune.save(fxprune.compress(model.eval(), 0.5, example_inputs=(x,), **kw), path)
    return read(path)


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    return {
        "tiny": _saved(tmp, Tiny(), torch.randn(1, 3, 8, 8), "tiny"),
        "resnet": _saved(tmp, ResNetCifar(8), torch.randn(1, 3, 8, 8), "resnet",
                         residual="scatter"),
    }


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "pwned"
    yield m
    assert not m.exists(), "a payload from the file ran"


def _code(marker: pathlib.Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def _write(payload: dict, path: pathlib.Path) -> pathlib.Path:
    torch.save(payload, str(path))
    return path


def _load_or_input_error(path: pathlib.Path) -> torch.fx.GraphModule | None:
    """Load; a refusal must be an InputError; what loads must run on its example inputs."""
    try:
        gm = fxprune.load(path)
    except InputError:
        return None
    assert isinstance(gm, torch.fx.GraphModule)
    gm.graph.lint()
    inputs = gm.meta.get(EXAMPLE_INPUTS)
    if inputs:
        with torch.no_grad():
            gm.eval()(*inputs)
    return gm


def _node(p: dict, op: str) -> dict:
    """The first node of ``op``; else a call_function (of a node) turned into a relu method."""
    n = next((n for n in p["graph"] if n["op"] == op), None)
    if n is None and op == "call_method":
        n = next(n for n in p["graph"] if n["op"] == "call_function"
                 and "__node__" in str(n["args"]["__tuple__"][:1]))
        n.update(op="call_method", target="relu")
    return n


# --- names and targets: one test per place a name reaches code ---------------------------------

def _injections(p: dict, marker: pathlib.Path):
    """(description, mutate(payload)) pairs; every one must be refused."""
    code, cmd = _code(marker), f"touch {marker}"

    def setter(op, key, value):
        def f(q):
            _node(q, op)[key] = value
        return f

    def call(target, *args):
        def f(q):
            n = _node(q, "call_function")
            n["target"] = {"__ref__": target}
            n["args"] = {"__tuple__": list(args)}
        return f

    def module_attr(key, value):
        def f(q):
            next(iter(q["modules"].values()))["attrs"][key] = value
        return f

    yield "placeholder target with a default", setter("placeholder", "target", f"x={code}")
    yield "placeholder name", setter("placeholder", "name", f"x={code}")
    yield "placeholder default", setter("placeholder", "args", {"__tuple__": [
        {"__ref__": "builtins.eval"}]})
    yield "node name", setter("call_function", "name", f"y = {code}; z")
    yield "call_method target", setter("call_method", "target", f"mean({code})")
    yield "call_method dunder chain", setter("call_method", "target", "__class__.__init__")
    yield "call_method private", setter("call_method", "target", "_make_subclass")
    yield "keyword name", setter("call_method", "kwargs", {"__dict__": {f"dim={code},k": 1}})
    yield "call_module target", setter("call_module", "target", f'conv"); {code}; ("')
    yield "call_module dunder", setter("call_module", "target", "__class__")
    yield "call_module hyphenated", setter("call_module", "target", f'a-b"); {code}; ("c-d')
    yield "call_module hyphenated dunder", setter("call_module", "target", "__class-__")
    yield "class name", lambda q: q.__setitem__("class_name", f"A:{code}")
    for target, args in (("torch.os.system", [cmd]), ("os.system", [cmd]),
                         ("builtins.eval", [code]), ("builtins.exec", [code]),
                         ("__import__", ["os"]), ("builtins.__import__", ["os"]),
                         ("torch.save", [{"__tuple__": [1]}, str(marker)]),
                         ("torch.serialization.save", [1, str(marker)]),
                         ("torch.from_file", [str(marker), True, 8]),
                         ("torch.utils.collect_env.run", [cmd]),
                         ("torch.nn.functional.torch.os.system", [cmd]),
                         ("torch.hub.load", [str(marker), "x"]), ("torch.hub", []),
                         ("operator.methodcaller", ["touch"]), ("operator.attrgetter", ["x"]),
                         ("subprocess.run", [cmd]), ("posix.system", [cmd]),
                         ("torch.fx.graph_module._forward_from_src", [code, {}]),
                         ("pathlib.Path.touch", [str(marker)]), ("math", [])):
        yield f"call_function {target}", call(target, *args)
    yield "getattr of a dunder", lambda q: _node(q, "call_function").update(
        target={"__ref__": "builtins.getattr"}, args={"__tuple__": [
            {"__node__": _node(q, "placeholder")["name"]}, "__class__"]})
    yield "function reference in arguments", lambda q: _node(q, "call_method").__setitem__(
        "args", {"__tuple__": [{"__node__": "x"}, {"__ref__": "builtins.eval"}]})
    yield "dtype that is a function", lambda q: _node(q, "call_method").__setitem__(
        "args", {"__tuple__": [{"__node__": "x"}, {"__dtype__": "load"}]})
    yield "module class GraphModule", lambda q: next(iter(q["modules"].values())).__setitem__(
        "class", "torch.fx.graph_module.GraphModule")
    yield "module class not a module", lambda q: next(iter(q["modules"].values())).__setitem__(
        "class", "torch.save")
    yield "module class through os", lambda q: next(iter(q["modules"].values())).__setitem__(
        "class", "torch.os._wrap_close")
    yield "module attr forward", module_attr("forward", {"__ref__": "torch.save"})
    yield "module attr hooks", module_attr("_forward_hooks", {"__dict__": {
        "a": {"__ref__": "torch.save"}}})
    yield "module attr dunder", module_attr("__class__", {"__ref__": "torch.nn.Linear"})
    yield "module attr bad ref", module_attr("act", {"__ref__": "torch.load"})
    yield "attribute path replaces forward", lambda q: q["attrs"].__setitem__(
        "forward", {"value": torch.zeros(1), "parameter": False})


@pytest.mark.parametrize("name", ["tiny", "resnet"])
def test_injected_names_and_targets_are_refused(payloads, name, tmp_path, marker):
    p = payloads[name]
    cases = list(_injections(p, marker))
    assert len(cases) > 40
    for what, mutate in cases:
        q = copy.deepcopy(p)
        mutate(q)
        path = _write(q, tmp_path / "evil.pt")
        with pytest.raises(InputError) as e:
            fxprune.load(path)
        assert str(path) in str(e.value), what
        assert not marker.exists(), what


def test_refusals_say_what_and_where(payloads, tmp_path, marker):
    p = copy.deepcopy(payloads["tiny"])
    _node(p, "call_function")["target"] = {"__ref__": "torch.os.system"}
    with pytest.raises(InputError, match=r"node '.*'.*torch\.os.*re-export"):
        fxprune.load(_write(p, tmp_path / "a.pt"))
    p = copy.deepcopy(payloads["tiny"])
    _node(p, "placeholder")["target"] = f"x={_code(marker)}"
    with pytest.raises(InputError, match="placeholder|not a plain Python identifier"):
        fxprune.load(_write(p, tmp_path / "b.pt"))
    p = copy.deepcopy(payloads["tiny"])
    p["modules"]["conv"]["params"]["weight"] = torch.zeros(5, 3, 3, 3)
    with pytest.raises(InputError, match=r"module 'conv'.*weight has shape \(5, 3, 3, 3\)"):
        fxprune.load(_write(p, tmp_path / "c.pt"))
    p = copy.deepcopy(payloads["tiny"])
    p["modules"]["dw"]["attrs"]["groups"] = 3
    with pytest.raises(InputError, match=r"module 'dw'.*groups=3"):
        fxprune.load(_write(p, tmp_path / "d.pt"))
    p = copy.deepcopy(payloads["tiny"])
    key = next(iter(p["manifest"]))
    dims = p["manifest"][key]
    d = next(iter(dims))
    dims[d] = list(reversed(dims[d])) if len(dims[d]) > 1 else [0, 0]
    with pytest.raises(InputError, match=rf"manifest\['{key}'\].*sorted"):
        fxprune.load(_write(p, tmp_path / "e.pt"))
    p = copy.deepcopy(payloads["tiny"])
    p["example_input_shapes"] = [[1, 3, 100000, 100000]]
    with pytest.raises(InputError, match="example_input_shapes.*elements"):
        fxprune.load(_write(p, tmp_path / "f.pt"))
    p = copy.deepcopy(payloads["tiny"])
    del p["graph"]
    with pytest.raises(InputError, match="field 'graph' is missing"):
        fxprune.load(_write(p, tmp_path / "g.pt"))
    p = copy.deepcopy(payloads["tiny"])
    p["modules"]["bn"]["attrs"]["num_features"] = 7  # the saved tensors say 4
    with pytest.raises(InputError, match=r"module 'bn'.*running_mean|module 'bn'.*weight"):
        fxprune.load(_write(p, tmp_path / "h.pt"))
    p = copy.deepcopy(payloads["tiny"])  # consistent modules, inconsistent graph: named node
    p["modules"]["fc"] = copy.deepcopy(p["modules"]["fc"])
    p["modules"]["fc"]["params"]["weight"] = torch.zeros(5, 3)
    p["modules"]["fc"]["attrs"]["in_features"] = 3
    p["manifest"].pop("fc.weight")  # (the manifest check would name it first)
    p["manifest_widths"].pop("fc.weight")
    p["state_dict"]["fc.weight"] = p["modules"]["fc"]["params"]["weight"]  # (and the state's)
    with pytest.raises(InputError, match="the saved graph fails at node 'fc'"):
        fxprune.load(_write(p, tmp_path / "i.pt"))


def test_pickles_never_unpickled(tmp_path, marker):
    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="not an fxprune file"):
        fxprune.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_manifest_indices_in_range_for_the_original(payloads, tmp_path):
    p = copy.deepcopy(payloads["resnet"])
    key = next(iter(p["manifest"]))
    d = next(iter(p["manifest"][key]))
    p["manifest"][key][d] = p["manifest"][key][d][:-1] + [10_000]
    with pytest.raises(InputError, match=rf"manifest\['{key}'\]\[{d}\].*\[0, "):
        fxprune.load(_write(p, tmp_path / "m.pt"), model=ResNetCifar(8))


def test_trusted_modules_opt_in(payloads, tmp_path):
    p = copy.deepcopy(payloads["tiny"])
    p["modules"]["conv"]["class"] = "collections.OrderedDict"
    path = _write(p, tmp_path / "t.pt")
    with pytest.raises(InputError, match="trusted_modules=\\['collections'\\]"):
        fxprune.load(path)
    with pytest.raises(InputError, match="not an nn.Module"):  # trusted, still not a module
        fxprune.load(path, trusted_modules=["collections"])


# --- the mutation fuzz --------------------------------------------------------------------------

def _paths(obj, prefix=()):
    """Every (container, key) in a payload, depth first."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(
        obj, list) else ()
    for k, v in items:
        yield obj, k, prefix + (k,)
        yield from _paths(v, prefix + (k,))


def _mutate(rng: random.Random, p: dict, marker: pathlib.Path) -> str:
    """One random mutation of ``p`` (in place); a description of it."""
    try:
        return _mutate_once(rng, p, marker)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):  # an earlier
        key = rng.choice(sorted(p)) if p else "format"  # mutation removed what it needs
        p[key] = None
        return f"set {key} None"


def _mutate_once(rng: random.Random, p: dict, marker: pathlib.Path) -> str:
    code = _code(marker)
    values = [None, -1, 0, 2, 10**12, 2**62, 1.5, float("nan"), "", "x", True, [], {},
              [[[[[]]]]] * 3, code, f"x={code}", "torch.os.system", "builtins.eval",
              "os.system", "__import__", "__class__", {"__ref__": "torch.os.system"},
              {"__ref__": "builtins.eval"}, {"__node__": "nope"}, {"__tuple__": "x"},
              {"__dtype__": "load"}, {"__device__": "nonsense:7"}, torch.zeros(3, 3),
              torch.zeros(0), torch.ones(2, dtype=torch.int64), {"__set__": [[1]]}]
    kind = rng.randrange(7)
    entries = list(_paths(p))
    if kind == 0:  # replace any field with a value of another type
        obj, k, path = rng.choice(entries)
        obj[k] = copy.deepcopy(rng.choice(values))
        return f"set {path}"
    if kind == 1:  # delete a field
        obj, k, path = rng.choice([e for e in entries if isinstance(e[0], dict)])
        del obj[k]
        return f"delete {path}"
    if kind == 2:  # a tensor of another shape
        obj, k, path = rng.choice([e for e in entries if isinstance(e[0][e[1]], torch.Tensor)])
        t = obj[k]
        shape = list(t.shape) or [1]
        i = rng.randrange(len(shape))
        shape[i] = max(0, shape[i] + rng.choice([-1, 1, 3]))
        obj[k] = torch.zeros(shape if rng.random() < 0.8 else shape[::-1], dtype=t.dtype)
        return f"reshape {path}"
    if kind == 3:  # manifest indices: out of range, unsorted, duplicated, negative
        key = rng.choice(list(p["manifest"]))
        d = rng.choice(list(p["manifest"][key]))
        idx = p["manifest"][key][d]
        p["manifest"][key][d] = rng.choice([idx + [10**9], idx[::-1] + [0], idx + idx[-1:],
                                            [-1] + idx[1:], idx[:-1], [1.5] * len(idx)])
        return f"manifest {key}"
    if kind == 4:  # node order, names and targets
        g = p["graph"]
        i, j = rng.randrange(len(g)), rng.randrange(len(g))
        choice = rng.randrange(4)
        if choice == 0:
            g[i], g[j] = g[j], g[i]
        elif choice == 1:
            g[i]["name"] = rng.choice([code, g[j]["name"], "1x", "for", "__init__"])
        elif choice == 2:
            g[i]["target"] = rng.choice(values[14:23] + [{"__ref__": "torch.save"}])
        else:
            g[i]["op"] = rng.choice(["call_function", "call_method", "get_attr", "output",
                                     "exec"])
        return f"graph {choice} {i} {j}"
    if kind == 5:  # example input sizes
        p["example_input_shapes"] = rng.choice([[[10**6, 10**6]], [[1, 3, 0, 8]], [[-1]],
                                                [[1] * 20], [[2**40]], [[1, 3, 8, 8]] * 40,
                                                ["1,3"], [[1.0, 3]]])
        return "example inputs"
    obj, k, path = rng.choice([e for e in entries if isinstance(e[0], dict)])  # injected keys
    obj[rng.choice([code, "__class__", "forward", "_parameters", "1"])] = obj[k]
    return f"key {path}"


@pytest.mark.parametrize("name,n", [("tiny", 250), ("resnet", 100)])
def test_mutation_fuzz(payloads, name, n, tmp_path, marker):
    rng = random.Random(9)
    loaded = 0
    for i in range(n):
        q = copy.deepcopy(payloads[name])
        what = [_mutate(rng, q, marker) for _ in range(rng.choice([1, 1, 2]))]
        path = _write(q, tmp_path / f"m{i % 5}.pt")
        try:
            loaded += _load_or_input_error(path) is not None
        except Exception as e:  # noqa: BLE001 - the assertion names the mutation
            raise AssertionError(f"mutation {i} {what}: {type(e).__name__}: {e}") from e
        assert not marker.exists(), f"mutation {i} {what} ran code"
    assert loaded < n / 2  # most mutations are refused (some, e.g. of a bias value, are data)


@pytest.mark.parametrize("name", ["tiny", "resnet"])
def test_truncated_and_flipped_bytes(payloads, name, tmp_path, marker):
    buf = io.BytesIO()
    torch.save(payloads[name], buf)
    data = buf.getvalue()
    rng = random.Random(3)
    for i in range(40):
        if i % 2:
            bad = data[:rng.randrange(len(data))]
        else:
            b = bytearray(data)
            for _ in range(rng.randrange(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            bad = bytes(b)
        (tmp_path / "b.pt").write_bytes(bad)
        _load_or_input_error(tmp_path / "b.pt")
        assert not marker.exists()


# --- the command line ---------------------------------------------------------------------------

def test_cli_opens_files_safely(payloads, tmp_path, marker, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = copy.deepcopy(payloads["tiny"])
    _node(evil, "placeholder")["target"] = f"x={_code(marker)}"
    _write(evil, tmp_path / "evil.pt")
    commands = [["inspect", "evil.pt"], ["compress", "evil.pt", "--ratio", "0.5"],
                ["graph", "evil.pt"], ["verify", "cifar:resnet20", "evil.pt"],
                ["verify", "evil.pt", "evil.pt"]]
    try:
        import matplotlib  # noqa: F401
        commands.append(["plot", "evil.pt", "-o", "w.png"])
    except ImportError:
        pass
    for argv in commands:
        assert cli.main(["-q", *argv]) == 2, argv
        assert "evil.pt" in capsys.readouterr().err, argv
    nograph = copy.deepcopy(payloads["tiny"])
    del nograph["graph"]
    _write(nograph, tmp_path / "nograph.pt")
    assert cli.main(["-q", "verify", "cifar:resnet20", "nograph.pt"]) == 2
    assert "field 'graph' is missing" in capsys.readouterr().err


def test_cli_trust_pickle_opt_in(tmp_path, marker, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    torch.save(model, tmp_path / "whole.pt")
    assert cli.main(["-q", "inspect", "whole.pt", "--input", "1,3,8,8"]) == 2
    err = capsys.readouterr().err
    assert "not an fxprune file" in err and "--trust-pickle" in err and "code" in err
    assert cli.main(["-q", "inspect", "whole.pt", "--input", "1,3,8,8", "--trust-pickle"]) == 0
    capsys.readouterr()
    torch.save(model.state_dict(), tmp_path / "sd.pt")  # plain data, but not a model
    assert cli.main(["-q", "inspect", "sd.pt", "--trust-pickle"]) == 2
    assert "state_dict" in capsys.readouterr().err

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    torch.save(Evil(), tmp_path / "evil.pt")
    assert cli.main(["-q", "graph", "evil.pt"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err


def test_cli_input_shape_is_a_usage_error(capsys):
    for bad in ("1,3,x", "1,,3", "x", "1,3,2.5", "1,-3", "1,0"):
        with pytest.raises(SystemExit) as e:
            cli.main(["inspect", "cifar:resnet20", "--input", bad])
        assert e.value.code == 2, bad
        assert "--input" in capsys.readouterr().err
    assert cli.parse_shape("1x3x8x8") == (1, 3, 8, 8)
    assert cli.parse_shape(" 1, 3, 8, 8 ") == (1, 3, 8, 8)


# --- the policy itself ----------------------------------------------------------------------------

def test_trust_policy_table():
    from fxprune.files import trust

    for path in ("torch.cat", "torch.nn.functional.relu", "torch._C._nn.gelu", "torch.zeros",
                 "torch.functional.split", "torch.Tensor.add", "torch._assert", "math.sqrt",
                 "_operator.add", "operator.getitem", "builtins.getattr", "torch.index_add",
                 "timm.layers.pos_embed.resample_abs_pos_embed"):
        assert callable(trust.resolve(path, "function", "t")), path
    for path in ("torch.os.system", "torch.load", "torch.save", "torch.from_file",
                 "torch.hub.load", "torch.compile", "torch.utils.collect_env.run",
                 "torch.Tensor.register_hook", "torch.Tensor.map_", "builtins.eval",
                 "operator.call", "operator.methodcaller", "operator.attrgetter", "os.system",
                 "torch.nn.functional.handle_torch_function", "torch.nn", "math",
                 "torch.nn.Conv2d", "torch.Tensor.__reduce_ex__", "torch.Tensor._make_subclass",
                 "timm.models.load_checkpoint", "torch.nn.functional.torch.load"):
        with pytest.raises(InputError):
            trust.resolve(path, "function", "t")
    assert trust.resolve("torch.nn.modules.conv.Conv2d", "class", "t") is nn.Conv2d
    assert trust.resolve("fxprune.models.resnet_cifar.ResNetCifar", "class", "t") is ResNetCifar
    for path in ("torch.fx.graph_module.GraphModule", "torch.nn.parallel.DataParallel",
                 "torch.jit.ScriptModule", "torch.cat", "collections.OrderedDict"):
        with pytest.raises(InputError):
            trust.resolve(path, "class", "t")
    assert trust.tensor_method("view", "t") == "view"
    for name in ("__class__", "_make_subclass", "register_hook", "shape", "nope", "a.b"):
        with pytest.raises(InputError):
            trust.tensor_method(name, "t")
    for name in ("x", "layer_1", "_tensor_constant0"):
        assert trust.check_name(name, "t") == name
    for name in ("1x", "for", "__init__", "x y", "ｘ", "", None, "x=1"):
        with pytest.raises(InputError):
            trust.check_name(name, "t")
    assert trust.check_path("layer1.0.conv1", "t")
    assert trust.check_path("trunk.block1-0.proj", "t")  # torchvision RegNet's block names
    assert trust.check_member(nn.Sequential, "block1-0", "t") == "block1-0"
    for path in ("a.b-c(1)", 'a.x-"', "a.__x-y", "a.x- y", "a.ｘ-y", "a.x-y\n"):
        with pytest.raises(InputError):
            trust.check_path(path, "t")
    with pytest.raises(InputError):
        trust.check_path("torch.a-b", "t", members=False)  # functions and classes: strict
    with pytest.raises(InputError, match="forward"):
        trust.check_member(nn.Conv2d, "forward", "t")
    with pytest.raises(InputError, match="internal"):
        trust.check_member(nn.Conv2d, "_forward_hooks", "t")
    assert trust.check_member(nn.Conv2d, "in_channels", "t") == "in_channels"


def test_hyphenated_module_names_round_trip(tmp_path):
    """Module names like torchvision RegNet's ``block1-0`` are saved and loaded."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("block1-0", nn.Conv2d(3, 8, 3, padding=1))
    model.add_module("act", nn.ReLU())
    model.add_module("head-1", nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 8, 8)
    small = fxprune.compress(model.eval(), 0.5, example_inputs=x)
    fxprune.save(small, tmp_path / "s.pt")
    again = fxprune.load(tmp_path / "s.pt")
    assert torch.equal(again(x), small(x))
    assert tuple(getattr(again, "block1-0").weight.shape) == (4, 3, 3, 3)


# --- files that lie about themselves (issue 24): refused without model= ------------------------

@pytest.mark.parametrize("name", ["tiny", "resnet"])
def test_files_that_contradict_themselves_are_refused(payloads, name, tmp_path):
    accepted = []
    cases = list(lies(payloads[name]))
    assert len(cases) > 40
    kinds = {what.split(":")[0].split("[")[0].split(" ")[0] for what, _ in cases}
    assert {"state_dict", "manifest", "manifest_widths", "ties", "module_training"} <= kinds
    for what, q in cases:
        try:
            fxprune.load(_write(q, tmp_path / "lie.pt"))
            accepted.append(what)
        except InputError:
            pass
    assert accepted == [], f"{len(accepted)} of {len(cases)} lies loaded: {accepted[:5]}"


def test_lies_are_refused_naming_the_field(payloads, tmp_path):
    def refused(edit, match):
        q = copy.deepcopy(payloads["tiny"])
        edit(q)
        with pytest.raises(InputError, match=match):
            fxprune.load(_write(q, tmp_path / "l.pt"))

    def state(q):
        q["state_dict"]["fc.weight"] = torch.zeros(5, 7)

    refused(state, r"state_dict\['fc.weight'\]: shape \(5, 7\).*rebuilt module's fc.weight")
    bn = "modules"

    def var(q):
        q[bn]["bn"]["buffers"]["running_var"][1] = -1.0

    refused(var, r"module 'bn': buffer 'running_var' holds negative variances")

    def mean(q):
        q[bn]["bn"]["buffers"]["running_mean"][0] = float("nan")

    refused(mean, r"module 'bn': buffer 'running_mean' holds NaN")

    def mode(q):
        q[bn]["conv"]["attrs"]["padding_mode"] = "mirror"

    refused(mode, r"module 'conv': attribute 'padding_mode' is 'mirror'")

    def past(q):
        q["manifest"]["conv.weight"][0][-1] = q["manifest_widths"]["conv.weight"][0]

    refused(past, r"manifest\['conv.weight'\]\[0\]: kept index 8 is out of range .*width 8")

    def coupled(q):
        idx = q["manifest"]["bn.running_var"][0]
        q["manifest"]["bn.running_var"][0] = sorted({*idx[1:], 0})

    refused(coupled, r"manifest\['bn.running_var'\]\[0\]: keeps other indices than "
                     r"manifest\['bn.weight'\]\[0\]")

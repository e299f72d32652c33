"""Checks that the generated Swift bindings declare the same API as the
generated Python bindings, which the Python suite exercises for real.

Swift cannot be compiled on the CI machines, so this is the check that the
Swift side exists and matches: every object, method (and whether it is
async), foreign-trait method, record field, enum variant and error variant
the Python module exposes must be declared in `concord.swift`, under
Swift's naming (camelCase members, escaped keywords).

Usage: check_swift_api.py <python bindings dir> <concord.swift>
"""

import enum
import inspect
import re
import sys


def camel(name):
    """snake_case or SCREAMING_CASE to lowerCamelCase."""
    head, *rest = name.lower().split("_")
    return head + "".join(p.title() for p in rest)


def block(swift, start_pattern):
    """The text of the declaration matching `start_pattern`, up to its closing brace."""
    m = re.search(start_pattern, swift, re.M)
    if not m:
        return None
    end = re.search(r"^}", swift[m.end():], re.M)
    return swift[m.start(): m.end() + (end.start() if end else len(swift))]


def main():
    bindings, swift_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, bindings)
    import concord

    swift = open(swift_path, encoding="utf-8").read()
    problems, checked = [], 0

    def expect(cond, what):
        nonlocal checked
        checked += 1
        if not cond:
            problems.append(what)

    names = [n for n, v in vars(concord).items()
             if inspect.isclass(v) and not n.startswith("_")
             and getattr(v, "__module__", None) == concord.__name__
             and not n.endswith(("Protocol", "Impl")) and n != "InternalError"]
    for name in sorted(names):
        cls = getattr(concord, name)
        if issubclass(cls, Exception):
            body = block(swift, rf"^enum {name}: Swift\.Error")
            expect(body is not None, f"error enum {name}")
            for variant, sub in vars(cls).items():
                if inspect.isclass(sub) and issubclass(sub, cls):
                    expect(body and re.search(rf"case {variant}\b", body), f"{name}.{variant}")
        elif issubclass(cls, enum.Enum):
            body = block(swift, rf"^public enum {name}\b")
            expect(body is not None, f"enum {name}")
            for member in cls.__members__:
                expect(body and re.search(rf"case `?{camel(member)}`?\b", body), f"{name}.{member}")
        elif hasattr(cls, "_uniffi_clone_handle"):
            # Methods are declared in the object's protocol; constructors are
            # static functions of the class (whose region ends at its converter).
            protocol = block(swift, rf"^public protocol {name}Protocol\b")
            start = re.search(rf"^open class {name}\b", swift, re.M)
            end = re.search(rf"^public struct FfiConverterType{name}\b", swift, re.M)
            expect(protocol is not None and start and end, f"class {name}")
            whole = swift[start.start():end.start()] if start and end else ""
            for meth, fn in vars(cls).items():
                if meth.startswith("_"):
                    continue
                constructor = isinstance(fn, classmethod)
                fn = fn.__func__ if constructor else fn
                where = whole if constructor else (protocol or "")
                static = r"static func" if constructor else r"func"
                sig = re.search(rf"{static} `?{camel(meth)}`?\(([^)]*)\)\s*(async)?", where)
                expect(sig, f"{name}.{meth}")
                if sig:
                    expect(bool(sig.group(2)) == inspect.iscoroutinefunction(fn),
                           f"{name}.{meth} async-ness")
                    params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
                    for p in params:
                        expect(re.search(rf"\b{camel(p)}:", sig.group(1)), f"{name}.{meth}({p})")
        elif f"{name}Impl" in vars(concord):
            body = block(swift, rf"^public protocol {name}\b")
            expect(body is not None, f"protocol {name}")
            for meth in vars(cls):
                if not meth.startswith("_"):
                    expect(body and re.search(rf"func {camel(meth)}\(", body), f"{name}.{meth}")
        elif any(inspect.isclass(v) and k.isupper() for k, v in vars(cls).items()):
            body = block(swift, rf"^public enum {name}\b")
            expect(body is not None, f"enum {name}")
            for variant, sub in vars(cls).items():
                if inspect.isclass(sub) and variant.isupper():
                    expect(body and re.search(rf"case `?{camel(variant)}`?\b", body),
                           f"{name}.{variant}")
        else:
            body = block(swift, rf"^public struct {name}\b")
            expect(body is not None, f"record {name}")
            for field in inspect.signature(cls.__init__).parameters:
                if field != "self":
                    expect(body and re.search(rf"public var `?{camel(field)}`?:", body),
                           f"{name}.{field}")

    for p in problems:
        print(f"missing in Swift: {p}")
    print(f"Swift API check: {checked - len(problems)}/{checked} declarations match "
          f"({len(names)} types)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

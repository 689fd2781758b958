"""A 28-layer 7B-shaped decoder for decode benchmarks, made from a 4-layer one without converting.

Converting a full random 7B checkpoint needs the 16 GB checkpoint and the converter's 28 GB fp32
export on disk at once, which this machine does not have (benchmarks/README.md). Decode cost does
not depend on the weights' values, only on their shapes and formats, so the deeper models are made
by repeating a converted shallow model's middle layers:

* ONNX: the graph's nodes of layers 1..L-1 are copied, renamed, up to `layers`, each copy with its
  own copy of the weights (written to the deeper model's own data file, one byte changed per
  tensor: ONNX Runtime shares the pre-packed buffer of byte-identical weights, which would let
  28 layers occupy the memory of 4), so that every layer has weights of its own in memory, as a
  real 28-layer model does.
* GGUF: the tensors of a llama.cpp-quantized shallow model are read and written again with the
  layer blocks repeated (each layer's bytes written anew: llama.cpp memory-maps the file).

Layer 0 is never a source: its first norm has no residual input, unlike every later layer.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx

_LAYER = re.compile(r"layers\.(\d+)")


def _renamed(name: str, shift: int) -> str:
    """`name` (a node, tensor or weight name) with every layer index in it moved by `shift`."""
    if not name:
        return name
    name = _LAYER.sub(lambda m: f"layers.{int(m.group(1)) + shift}", name)
    for prefix in ("past_key_values.", "present."):
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            return f"{prefix}{int(index) + shift}.{rest}"
    return name


def _layer_of(node: onnx.NodeProto) -> int | None:
    match = _LAYER.search(node.name)
    return int(match.group(1)) if match else None


def deepen_onnx(source: Path, target: Path, layers: int) -> Path:
    """Write `target` and its data file `target.data` with `layers` layers (about 131 MB each at 7B int4)."""
    model = onnx.load(str(source))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    shallow = 1 + max(i for n in graph.node if (i := _layer_of(n)) is not None and "final_norm" not in n.name)
    sources = list(range(1, shallow))
    head, blocks, tail = [], {i: [] for i in range(shallow)}, []
    for node in graph.node:
        layer = _layer_of(node)
        if layer is None:
            (tail if blocks[shallow - 1] else head).append(node)
        elif layer == shallow:
            tail.append(node)
        else:
            blocks[layer].append(node)
    nodes = list(head)
    for layer in range(layers):
        source_layer = layer if layer < shallow else sources[(layer - shallow) % len(sources)]
        nodes += [_shifted(node, layer - source_layer, weights) for node in blocks[source_layer]]
    nodes += [_shifted(node, layers - shallow, weights) for node in tail]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(weights.values())
    _repeat_io(graph.input, "past_key_values.", shallow, layers)
    _repeat_io(graph.output, "present.", shallow, layers)
    onnx.save(model, str(target), save_as_external_data=True, location=target.name + ".data", size_threshold=1024)
    return target


def _shifted(node: onnx.NodeProto, shift: int, weights: dict[str, onnx.TensorProto]) -> onnx.NodeProto:
    """A copy of `node` moved `shift` layers down; the weights it reads are copied under their new names."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = _renamed(node.name, shift)
    copy.input[:] = [_renamed(n, shift) for n in node.input]
    copy.output[:] = [_renamed(n, shift) for n in node.output]
    for old, new in zip(node.input, copy.input, strict=True):
        if old in weights and new not in weights:
            weight = onnx.TensorProto()
            weight.CopyFrom(weights[old])
            weight.name = new
            if weight.raw_data:  # one byte changed: equal bytes would let ONNX Runtime share the pre-packed copy
                data = bytearray(weight.raw_data)
                data[0] ^= 1 + shift % 255
                weight.raw_data = bytes(data)
            weights[new] = weight
    return copy


def _repeat_io(values: object, prefix: str, shallow: int, layers: int) -> None:
    """Extend the KV inputs or outputs from `shallow` layers to `layers` (same shapes and types)."""
    template = {v.name[len(prefix) :].split(".", 1)[1]: v for v in values if v.name.startswith(f"{prefix}0.")}
    kept = [v for v in values if not v.name.startswith(prefix)]
    extra = []
    for layer in range(layers):
        for kind in ("key", "value"):
            value = onnx.ValueInfoProto()
            value.CopyFrom(template[kind])
            value.name = f"{prefix}{layer}.{kind}"
            extra.append(value)
    del values[:]
    values.extend(kept + extra)


def deepen_gguf(source: Path, target: Path, layers: int) -> Path:
    """Write a GGUF with `layers` blocks, repeating `source`'s blocks 1..L-1 (llama.cpp's own quantization)."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = "qwen2"
    writer = gguf.GGUFWriter(str(target), arch)
    shallow = int(reader.fields[f"{arch}.block_count"].contents())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = layers if field.name == f"{arch}.block_count" else field.contents()
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, main_type, sub_type=sub_type)
    by_name = {t.name: t for t in reader.tensors}
    order = [t.name for t in reader.tensors if not t.name.startswith("blk.")]
    for layer in range(layers):
        source_layer = layer if layer < shallow else 1 + (layer - shallow) % (shallow - 1)
        order += [
            f"blk.{layer}." + t.name.split(".", 2)[2]
            for t in reader.tensors
            if t.name.startswith(f"blk.{source_layer}.")
        ]
    for name in order:
        match = re.match(r"blk\.(\d+)\.(.*)", name)
        if match:
            layer = int(match.group(1))
            source_layer = layer if layer < shallow else 1 + (layer - shallow) % (shallow - 1)
            tensor = by_name[f"blk.{source_layer}.{match.group(2)}"]
        else:
            tensor = by_name[name]
        writer.add_tensor(name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target

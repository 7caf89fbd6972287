"""vit_flax.bench.step_profile: kinds of ops from HLO and aten names, shares of a
step, and a real (tiny) JAX step traced end to end."""

import pytest

from vit_flax.bench import peers
from vit_flax.bench import step_profile

HLO = '''HloModule jit_train_step

%fused_computation.1 (p: f32[4,8]) -> f32[4,8] {
  %p = f32[4,8]{1,0} parameter(0)
  ROOT %inner = f32[4,8]{1,0} negate(%p), metadata={op_name="inner"}
}

ENTRY %main (a: f32[4,8], b: f32[8,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %ynn_fusion.3 = f32[4,8]{1,0} fusion(%a, %b), kind=kCustom, calls=%f, metadata={op_name="jit(train_step)/jvp(VisionTransformer)/Transformer/encoderblock_0/MlpBlock_3/Dense_0/dot_general"}, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %dot.4 = f32[2,4,4]{2,1,0} dot(%a, %a), metadata={op_name="jit(train_step)/jvp(VisionTransformer)/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/dot_general"}
  %dot.5 = f32[4,8]{1,0} dot(%a, %b), metadata={op_name="jit(train_step)/jvp(VisionTransformer)/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/dot_general"}
  %dot.6 = f32[4,8]{1,0} dot(%a, %b), metadata={op_name="jit(update_fn)/jvp(VisionTransformer)/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/value/dot_general"}
  %ynn_fusion.7 = f32[4,3,2,4]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%f, metadata={op_name="jit(train_step)/jvp(VisionTransformer)/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query_key_value/...c,cshd->...shd/dot_general"}, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %copy_bitcast_fusion.2 = f32[8,4]{1,0} fusion(%a), kind=kLoop, metadata={op_name="jit(train_step)/transpose(jvp(VisionTransformer))/Transformer/encoderblock_0/LayerNorm_2/add_any"}
  %multiply_fusion = f32[4,8]{1,0} fusion(%a), kind=kLoop, metadata={op_name="jit(train_step)/transpose(jvp(VisionTransformer))/Transformer/encoderblock_0/LayerNorm_0/mul"}
  %tanh_fusion = f32[4,8]{1,0} fusion(%a), kind=kLoop, metadata={op_name="jit(train_step)/jvp(VisionTransformer)/Transformer/encoderblock_0/MlpBlock_3/tanh"}
  %add_fusion.9 = f32[8,8]{1,0} fusion(%b), kind=kLoop, metadata={op_name="jit(train_step)/add"}
  ROOT %sub_fusion = f32[4] fusion(%a), kind=kLoop, metadata={op_name="jit(train_step)/jvp(jit(log_softmax))/sub"}
}
'''


def test_entry_instructions_and_their_kinds():
  instructions = step_profile.entry_instructions(HLO)
  assert 'inner' not in instructions  # Inside a fusion: no thunk.
  kinds = {name: step_profile.hlo_kind(name, *fields)
           for name, fields in instructions.items()}
  assert kinds == {
      'a': 'other', 'ynn_fusion.3': 'matmul', 'dot.4': 'attention',
      'dot.5': 'matmul', 'dot.6': 'matmul', 'ynn_fusion.7': 'matmul',
      'copy_bitcast_fusion.2': 'copy', 'multiply_fusion': 'layer_norm', 'tanh_fusion': 'gelu',
      'add_fusion.9': 'optimizer', 'sub_fusion': 'loss'}


@pytest.mark.parametrize('name, in_optimizer, kind', [
    ('aten::addmm', False, 'matmul'),
    ('aten::mm', False, 'matmul'),
    ('aten::_scaled_dot_product_flash_attention_for_cpu', False, 'attention'),
    ('aten::native_layer_norm_backward', False, 'layer_norm'),
    ('aten::gelu_backward', False, 'gelu'),
    ('aten::copy_', False, 'copy'),
    ('aten::_log_softmax', False, 'loss'),
    ('aten::add_', True, 'optimizer'),
    ('aten::add', False, 'other'),
])
def test_torch_kinds(name, in_optimizer, kind):
  assert step_profile.torch_kind(name, in_optimizer) == kind


def test_busy_thread_time_is_shared_out_over_the_step():
  busy = {'matmul': 0.3, 'copy': 0.1}
  # 2 threads of a 0.25 s step: 0.5 thread-seconds, 0.4 of them busy.
  figures = step_profile.as_step_ms(busy, 0.25, threads=2)
  assert figures['matmul'] == pytest.approx(150.0)
  assert figures['copy'] == pytest.approx(50.0)
  assert figures['idle'] == pytest.approx(50.0)


def test_a_traced_tiny_vit_flax_step_is_mostly_known_kinds():
  row = peers.parse_row('quickstart:image_size=8,patch=4,width=16,depth=1,'
                        'heads=2,mlp=32,batch=4')
  run = peers.build_vit_flax(row, peers.synthetic_batch(row), {})
  run.run_steps(1)
  figures = run.profile()
  assert set(figures) == set(step_profile.KINDS) | {'idle', 'wall'}
  assert all(ms >= 0 for ms in figures.values())
  for kind in ('matmul', 'attention', 'layer_norm', 'optimizer'):
    assert figures[kind] > 0, figures
  busy = sum(figures[kind] for kind in step_profile.KINDS)
  assert busy + figures['idle'] == pytest.approx(figures['wall'])
  assert figures['other'] < 0.5 * busy

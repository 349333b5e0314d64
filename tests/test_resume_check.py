"""The config against the checkpoint's on resume (resume_check.py): which
changes are an error, which warn and which pass quietly. The same on real
checkpoints through the command line is in test_failures.py."""

import json

import pytest

from alexnet_jax import resume_check
from alexnet_jax import train
from configs import smoke

def saved(config, step=20, shards=1):
  return {"step": step, "config": resume_check.as_json(config),
          "data_shards": shards}


def check(config, meta, tmp_path, allow=False):
  return resume_check.check(config, meta, str(tmp_path),
                            rows=slice(0, config.batch_size),
                            num_examples=1024, allow=allow)


def test_frequencies_and_the_mesh_pass_quietly(tmp_path, capsys):
  before = smoke.get_config()
  now = smoke.get_config()
  now.log_every_steps, now.eval_every_steps = 1, 7
  now.checkpoint_every_steps, now.max_checkpoints_to_keep = 3, 9
  now.mesh.data, now.mesh.coordinator_address = 2, "10.0.0.1:1234"
  now.model.ops = "plain"
  now.data.path = "/elsewhere"  # Not read by a synthetic source.
  assert check(now, saved(before), tmp_path) == []
  assert capsys.readouterr().err == ""
  assert check(now, {}, tmp_path) == []  # A new run: nothing to compare.


def test_other_changes_warn_one_line_each(tmp_path, capsys):
  before = smoke.get_config()
  now = smoke.get_config()
  now.optim.learning_rate = 0.01
  now.optim.schedule = "cosine"
  now.num_train_steps = 90
  lines = check(now, saved(before), tmp_path)
  assert lines == [
      "warning: num_train_steps changed since the checkpoint at step 20: "
      "60 -> 90",
      "warning: optim.learning_rate changed since the checkpoint at step 20: "
      "0.005 -> 0.01",
      "warning: optim.schedule changed since the checkpoint at step 20: "
      "'plateau' -> 'cosine'"]
  assert capsys.readouterr().err.splitlines() == lines


@pytest.mark.parametrize("field,value,shown", [
    ("batch_size", 64, "batch_size 32 -> 64"),
    ("seed", 3, "seed 0 -> 3"),
    ("data.source", "folder", "data.source 'synthetic' -> 'folder'"),
    ("data.num_train_examples", 512, "data.num_train_examples 1024 -> 512"),
])
def test_a_moved_data_position_is_an_error(tmp_path, capsys, field, value,
                                           shown):
  before = smoke.get_config()
  now = smoke.get_config()
  now.optim.momentum = 0.8
  section, _, name = field.rpartition(".")
  (now[section] if section else now)[name] = value
  with pytest.raises(train.ConfigError) as e:
    check(now, saved(before), tmp_path)
  text = str(e.value)
  assert f"the data position of the checkpoint at step 20 in {tmp_path}: " \
         f"{shown};" in text
  assert "--allow_config_change" in text and "\n" not in text
  capsys.readouterr()
  lines = check(now, saved(before), tmp_path, allow=True)
  assert len(lines) == 2 and "optim.momentum" in lines[0]
  assert lines[1].startswith(f"warning: --allow_config_change: {shown}; "
                             f"step 20 is kept")
  batch = now.batch_size
  assert (f"restarts at example 20 x {batch} = {20 * batch} of the new "
          f"stream (epoch {20 * batch / 1024:.2f}; the checkpoint's run was "
          f"at example 640)") in lines[1]


def test_at_step_0_no_data_was_read_and_a_change_only_warns(tmp_path):
  before = smoke.get_config()
  now = smoke.get_config()
  now.batch_size = 64
  assert check(now, saved(before, step=0), tmp_path) == [
      "warning: batch_size changed since the checkpoint at step 0: 32 -> 64"]


def test_other_data_shards_are_an_error(tmp_path):
  config = smoke.get_config()
  with pytest.raises(train.ConfigError, match="data shards 2 -> 1"):
    check(config, saved(config, shards=2), tmp_path)


def test_a_checkpoint_without_its_config_is_compared_with_config_json(
    tmp_path):
  before = smoke.get_config()
  (tmp_path / "config.json").write_text(before.to_json_best_effort(indent=2))
  now = smoke.get_config()
  now.batch_size = 16
  with pytest.raises(train.ConfigError, match="batch_size 32 -> 16"):
    check(now, {"step": 5}, tmp_path)
  # A field the checkpoint's code did not have yet: named, not an error.
  old = json.loads(before.to_json_best_effort())
  del old["data"]["holdout"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  lines = check(smoke.get_config(), {"step": 5}, tmp_path)
  assert lines == ["warning: data.holdout changed since the checkpoint at "
                   "step 5: (not in the checkpoint's config) -> 0"]


@pytest.mark.parametrize("field,value", [("path", "/b"),
                                         ("shuffle_buffer", 200)])
def test_a_prepared_sources_path_and_shuffle_move_its_data(tmp_path, field,
                                                          value):
  before = smoke.get_config()
  before.data.source, before.data.path = "prepared", "/a"
  before.data.shuffle_buffer = 100
  now = smoke.get_config()
  now.data.source, now.data.path = "prepared", "/a"
  now.data.shuffle_buffer = 100
  now.data[field] = value
  with pytest.raises(train.ConfigError, match=f"data.{field} "):
    check(now, saved(before), tmp_path)

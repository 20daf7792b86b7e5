"""Recovery training: distillation from the uncompressed teacher, QAT, LoRA; resumable; one or many processes.

    from compress.recover import RecoverConfig, recover
    report = recover(student, teacher=original, data=splits,
                     config=RecoverConfig(steps=500, output_dir="run/", resume=True))
    print(report)

Files: ``config.py`` (RecoverConfig), ``loop.py`` (recover), ``objective.py``
(the loss of a micro-batch), ``losses.py`` (KD / top-k KD / CE on logit
tensors), ``schedule.py`` (learning rate, QAT lambda), ``lora.py`` (adapters,
merge), ``teacher.py`` (teacher checks, offline top-k logits), ``batches.py``
(data checks and order), ``heldout.py`` (evaluation, early stopping),
``state.py`` (checkpoints), ``distributed.py`` (torchrun / DDP), ``fsdp.py``
(sharded training of large models), ``runlog.py`` (progress, JSON log, plot),
``report.py``.
"""
from compress.recover.config import RecoverConfig, RecoverError
from compress.recover.distributed import is_main_process
from compress.recover.lora import LoRALinear, add_lora, lora_parameters, merge_lora
from compress.recover.loop import StepInfo, recover
from compress.recover.losses import ce_loss, kd_loss, topk_kd_loss, topk_logprobs
from compress.recover.report import RecoverReport
from compress.recover.schedule import lr_factor, qat_lambda
from compress.recover.teacher import OfflineTeacher, precompute_teacher

__all__ = [
    "LoRALinear",
    "OfflineTeacher",
    "RecoverConfig",
    "RecoverError",
    "RecoverReport",
    "StepInfo",
    "add_lora",
    "ce_loss",
    "is_main_process",
    "kd_loss",
    "lora_parameters",
    "lr_factor",
    "merge_lora",
    "precompute_teacher",
    "qat_lambda",
    "recover",
    "topk_kd_loss",
    "topk_logprobs",
]

# `compress.recover(...)` keeps working after this subpackage is imported (see compress/_callable.py).
from compress._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, "recover")

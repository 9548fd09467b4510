"""Gradient harmonization in the Hugging Face ``Trainer``.

Replaces, in a ``transformers.Trainer`` subclass: the default ``training_step`` (forward, ``compute_loss``,
``self.accelerator.backward(loss)``) with one that computes the two losses and calls
``Harmonizer.backward(loss_align, loss_cls)``; the Trainer's loop then clips, steps the optimizer and the
schedule as usual. (Gradient accumulation over several batches works: the Harmonizer adds into ``.grad``;
divide the losses by the accumulation steps as the Trainer would, through ``scale1``/``scale2``.)

    python python/hf_trainer_example.py [--steps 4]
"""
import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transformers  # noqa: E402

import gh_kernels  # noqa: E402
from trainer_common import ShiftedDomains, UDANet  # noqa: E402


class HarmonizedTrainer(transformers.Trainer):
    def __init__(self, *args, method="gh++", trade_off=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.harmonizer = gh_kernels.Harmonizer(self.model.parameters(), shared=self.model.shared_parameters(),
                                                method=method)
        self.trade_off = trade_off
        self.cos_history = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        loss_align, loss_cls = model(inputs["xs"], inputs["ys"], inputs["xt"])
        scale = 1.0 / self.args.gradient_accumulation_steps
        result = self.harmonizer.backward(loss_align, loss_cls, scale1=self.trade_off * scale, scale2=scale)
        self.cos_history.append(result.cos)
        return (loss_cls + self.trade_off * loss_align).detach() * scale


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--samples", type=int, default=64, help="size of the synthetic data set")
    ap.add_argument("--accumulation", type=int, default=1)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = UDANet()
    with tempfile.TemporaryDirectory() as out:
        training = transformers.TrainingArguments(output_dir=out, max_steps=args.steps, per_device_train_batch_size=8,
                                                  gradient_accumulation_steps=args.accumulation, learning_rate=0.05,
                                                  optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
                                                  report_to=[], save_strategy="no", logging_strategy="no",
                                                  use_cpu=True, dataloader_num_workers=0, seed=0,
                                                  remove_unused_columns=False, disable_tqdm=True)
        trainer = HarmonizedTrainer(model=model, args=training, train_dataset=ShiftedDomains(size=args.samples),
                                    data_collator=torch.utils.data.default_collate)
        trainer.train()
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    print(f"hf_trainer_example: {trainer.state.global_step} harmonized steps, "
          f"cos of the last {float(trainer.cos_history[-1]):+.3f}; checksum {checksum:.10f}")
    return model


if __name__ == "__main__":
    main()

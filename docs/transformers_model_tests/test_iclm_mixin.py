import sys, unittest
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import torch
from transformers import LlamaConfig
from transformers.testing_utils import require_torch
from .test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask
from configuration_iclm import IclmConfig
from modeling_iclm import IclmForCausalLM, IclmModel


class IclmModelTester:
    def __init__(self, parent, batch_size=2, seq_length=7):
        self.parent = parent
        self.batch_size, self.seq_length = batch_size, seq_length
        self.vocab_size, self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 99, 32, 2, 4
        self.intermediate_size = 37
        self.is_training = True
        self.use_labels = True
        self.pad_token_id = 0

    def get_config(self):
        text = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0)
        return IclmConfig(text_config=text, num_domains=2)

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": mask}


@require_torch
class IclmModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (IclmModel, IclmForCausalLM)
    test_pruning = False
    test_head_masking = False

    def setUp(self):
        self.model_tester = IclmModelTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is IclmForCausalLM:  # what the static causal-LM mapping would do
            inputs["labels"] = inputs["input_ids"].clone()
        return inputs

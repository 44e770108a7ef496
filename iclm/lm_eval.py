"""lm-evaluation-harness model class ``iclm``: ICLM scoring that routes on the context only.

Importing this module registers ``IclmLM`` under the lm-eval model name ``iclm`` (``iclm lm-eval ...``
imports it for you), so ``lm_eval.simple_evaluate(model="iclm", model_args="pretrained=<ICLM folder>")``
and ``--model iclm`` work.

Why not lm-eval's ``hf`` class: on the log-likelihood path it runs right-padded batches of
``context + continuation`` with no attention mask and no labels. An ICLM router then reads the padding and
the candidate answer, so the module that scores a candidate depends on the candidate itself and on what
else shares its batch. ``IclmLM`` gives every row a mask and labels that mark the continuation, which
by the model's routing contract makes the router read the context only; scores then no longer depend on
batch size or padding. The generation path passes lm-eval's left-padding mask to ``generate``, which
routes on the attended prompt.

``lm_eval`` is a test/optional dependency: import this module only where it is installed.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm import tqdm

try:  # registers AutoConfig/AutoModelForCausalLM for model_type "iclm": folders load without remote code
    import modeling_iclm  # noqa: F401
except ImportError:  # pragma: no cover - iclm installed without its top-level model modules
    pass

logger = logging.getLogger(__name__)

__all__ = ["IclmLM"]

IGNORE_INDEX = -100


@register_model("iclm")
class IclmLM(HFLM):
    """lm-eval's ``HFLM`` for ICLMs: log-likelihood rows carry a mask and continuation labels.

    ``pretrained`` is an ICLM folder (loaded with the local ``modeling_iclm`` classes, or with the folder's
    own code when ``trust_remote_code=True``) or an in-memory model, then with ``tokenizer=``. Everything
    else is HFLM's: request caching, length-sorted batching, the one-token-continuation logits cache,
    truncation, ``batch_size="auto"``, generation. ``device`` defaults to CUDA when available, else CPU
    (HFLM's default is always ``"cuda"``). Any causal LM works; for a model without a router the mask and
    labels are harmless (the labels only add an unused loss).
    """

    def __init__(self, pretrained, backend: str = "causal", device: str | None = None, **kwargs) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(pretrained, backend=backend, device=device, **kwargs)
        if self.backend != "causal":
            raise ValueError(f"IclmLM scores causal LMs; got backend={self.backend!r}.")

    # ------------------------------------------------------------------------------------------- calls
    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """The model's logits for ``inps``, with the mask and labels passed through.

        HFLM passes them to seq2seq models only (and asserts so); a causal ICLM needs them to route. Without
        them (``_detect_batch_size``'s probe) the router reads every token, which is fine for a memory probe.

        Rows whose prompt is a single token (an empty lm-eval context is ``[prefix token]``; rolling windows)
        are routed here instead: the model treats a row labelled from its second token as labelled from its
        start (``router_prefix_length``) and would read its first tokens, i.e. the continuation. Such rows are
        routed with ``model.route`` on their one context token and run with those ``domain_ids``.
        """
        with (
            torch.no_grad(),
            torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                           enabled=self.mixed_precision_dtype is not None),
        ):
            if labels is None or not hasattr(self.model, "route"):
                return self.model(input_ids=inps, attention_mask=attn_mask, labels=labels).logits
            labelled = labels != IGNORE_INDEX
            first = torch.where(labelled.any(1), labelled.int().argmax(1), labels.shape[1])
            single = first <= 1
            if not bool(single.any()):
                return self.model(input_ids=inps, attention_mask=attn_mask, labels=labels).logits
            if attn_mask is None:
                attn_mask = torch.ones_like(inps)
            parts = []
            if not bool(single.all()):
                rest = ~single
                parts.append((rest, self.model(input_ids=inps[rest], attention_mask=attn_mask[rest],
                                               labels=labels[rest]).logits))
            routes = self.model.route(input_ids=inps[single, :1], attention_mask=attn_mask[single, :1]).routes
            parts.append((single, self.model(input_ids=inps[single], attention_mask=attn_mask[single],
                                             domain_ids=routes).logits))
            logits = parts[0][1].new_empty((inps.shape[0], *parts[0][1].shape[1:]))
            for rows, part in parts:
                logits[rows] = part
            return logits

    def _model_generate(self, context, max_length, stop, attention_mask=None, **generation_kwargs):
        """HFLM's generation, with the left-padding mask required and passed to ``generate``.

        lm-eval 0.4.13's ``generate_until`` already passes it; without it the router (and the positions)
        of a left-padded row would read the padding, so a missing mask is an error rather than a silent
        change of route.
        """
        if attention_mask is None:
            raise ValueError("IclmLM generates from left-padded batches and needs their attention_mask.")
        return super()._model_generate(context, max_length, stop, attention_mask=attention_mask,
                                       **generation_kwargs)

    # ---------------------------------------------------------------------------------- log-likelihood
    @staticmethod
    def _logits_cache_is_exact(requests) -> bool:
        """Whether HFLM's logits cache only shares a forward between rows that route alike.

        The cache runs one row per ``context + continuation[:-1]`` key and reuses its logits for the others.
        Rows with one key but different context lengths (``A`` + ``x y`` and ``A x`` + ``y``) share
        the tokens but not the route (the router reads ``A`` for one, ``A x`` for the other), so then the
        cache is off for this call.
        """
        context_length: dict[tuple, int] = {}
        for _, context, continuation in requests:
            key = tuple(context + continuation[:-1])
            if context_length.setdefault(key, len(context)) != len(context):
                return False
        return True

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """HFLM's causal log-likelihood loop; each row gets a mask and labels marking its continuation.

        Rows are lm-eval's ``(context + continuation)[-(max_length + 1):][:-1]`` (same truncation, the
        last continuation token is predicted, not fed), right-padded. Labels are -100 on the context and
        padding and the continuation's tokens where they are inputs, so the router reads the attended tokens
        before the first labelled one: the context (all of it for a one-token continuation, whose row holds
        no continuation token; one-token contexts: see ``_model_call``). At least one context token always
        remains, since lm-eval bounds the continuation by ``max_length``. Sorting, batching, the logits
        cache and request caching are HFLM's.
        """
        res = []

        def _collate(req):
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        def _lookup_one_token_cont(req):
            return req[-2] + req[-1][:-1]

        use_logits_cache = self.logits_cache and self._logits_cache_is_exact(requests)
        re_ord = Collator(requests, sort_fn=_collate, group_by="contexts" if use_logits_cache else None,
                          group_fn=_lookup_one_token_cont)
        n_reordered_requests = len(re_ord)
        batch_size = self.batch_size if self.batch_size != "auto" else override_bs if override_bs is not None else 0
        batch_fn = (
            self._batch_scheduler
            if self.batch_size == "auto" and n_reordered_requests > 0 and not override_bs
            else None
        )
        if batch_fn is not None:
            self.batch_sizes = {}  # as HFLM: detect afresh for these requests

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or (self.rank != 0)),
                    desc="Running loglikelihood requests")
        for chunk in re_ord.get_batched(n=batch_size, batch_fn=batch_fn):
            rows, context_lengths = [], []
            for _, context_enc, continuation_enc in chunk:
                assert len(context_enc) > 0 and 0 < len(continuation_enc) <= self.max_length
                total_length = len(context_enc) + len(continuation_enc)
                if total_length > self.max_length + 1:
                    logger.warning(
                        "Combined length of context (%d) and continuation (%d) exceeds the model's maximum length "
                        "(%d); truncating %d tokens from the left.", len(context_enc), len(continuation_enc),
                        self.max_length, total_length - self.max_length - 1,
                    )
                row = (context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
                rows.append(row)
                context_lengths.append(len(row) - (len(continuation_enc) - 1))

            width = max(map(len, rows))
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
            for i, (row, n_context) in enumerate(zip(rows, context_lengths, strict=True)):
                input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
                attention_mask[i, : len(row)] = 1
                labels[i, n_context: len(row)] = input_ids[i, n_context: len(row)]

            multi_logits = F.log_softmax(
                self._model_call(input_ids.to(self.device), attn_mask=attention_mask.to(self.device),
                                 labels=labels.to(self.device)),
                dim=-1, dtype=self.softmax_dtype,
            )
            virtual = multi_logits.shape[1] - width  # prompt-tuning style tokens the model may prepend

            for (request_str, ctx_tokens, continuation_enc), logits, row in zip(chunk, multi_logits, rows,
                                                                                  strict=True):
                logits = self._select_cont_toks(logits, contlen=len(continuation_enc),
                                                inplen=len(row) + virtual).unsqueeze(0)  # [1, cont, vocab]
                greedy_tokens = logits.argmax(dim=-1)
                for request_str, cont_toks, logits in re_ord.get_cache(  # noqa: B020
                    req_str=request_str, cxt_toks=ctx_tokens, cont_toks=continuation_enc, logits=logits,
                ):
                    cont_toks = torch.tensor(cont_toks, dtype=torch.long, device=self.device).unsqueeze(0)
                    max_equal = (greedy_tokens[:, -cont_toks.shape[1]:] == cont_toks).all()
                    logits = torch.gather(logits, 2, cont_toks.unsqueeze(-1)).squeeze(-1)
                    answer = (float(logits.sum()), bool(max_equal))
                    res.append(answer)
                    if request_str is not None:  # rolling windows are cached per document by the caller
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
                    pbar.update(1)
        pbar.close()
        return re_ord.get_original(res)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """HFLM's rolling log-likelihood (perplexity); each window routes on its lm-eval context only.

        A rolling request has no prompt. lm-eval splits the document into windows ``(context, tokens)``
        whose context is the prefix token (BOS, else EOS) for the first window, the one token just before
        the window for later full windows and the tokens before a last, shorter one; every document token
        is scored once. The router reads that context and never the scored tokens (a route picked by
        reading the text it then scores would leak it). So a document that fits one window is scored under
        the route of the prefix token alone, the same module for every such document, and a long document
        may change module between windows. The model's own rule for rows labelled from their start (the
        router reads the first ``router_prefix_length`` tokens, which are then not predicted) is not used:
        lm-eval scores every token.
        """
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

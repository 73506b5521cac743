from runtime.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Llama with biases on q/k/v (always, regardless of config.attention_bias)."""

    @staticmethod
    def qkv_bias(cfg) -> bool:
        return True

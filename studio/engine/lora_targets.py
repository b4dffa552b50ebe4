"""The LoRA target modules of the reference recipe (DiffSynth-Studio's Qwen-Image-Edit LoRA
example), shared by the trainer's flags and the memory plan."""
DEFAULT_TARGETS = ("to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,"
                   "img_mlp.net.2,img_mod.1,txt_mlp.net.2,txt_mod.1")

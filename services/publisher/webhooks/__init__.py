"""Webhook endpoints: the admins' API to register, rotate, test, watch and switch them."""

"""radixrt"""

# /etc/profile.d/metadata-proxy.sh: login shells use the role served by metadata-proxy.
# The trailing slash matters for AWS CLI v2 before 2.28.3. NO_PROXY and no_proxy keep metadata requests off
# any HTTP proxy: botocore reads both, and the lowercase one wins when both are set, so each gets the entry.
export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9254/
case ",${NO_PROXY:-}," in
  *,127.0.0.1,*) ;;
  *) export NO_PROXY="${NO_PROXY:+$NO_PROXY,}127.0.0.1,localhost" ;;
esac
case ",${no_proxy:-}," in
  *,127.0.0.1,*) ;;
  *) export no_proxy="${no_proxy:+$no_proxy,}127.0.0.1,localhost" ;;
esac

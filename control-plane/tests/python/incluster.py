"""A pod's view of the API server: the official Python client's in-cluster
configuration (token and CA files, KUBERNETES_SERVICE_HOST/PORT) with a
ServiceAccount token the server issued. Prints one "ok <check>" line per
passing check and exits non-zero on the first failure.

usage: incluster.py HOST PORT TOKEN_FILE CA_FILE
"""
import sys

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader


def check(name, cond, detail=""):
    if not cond:
        print(f"FAILED {name}: {detail}")
        sys.exit(1)
    print(f"ok {name}")


def main(host, port, token_file, ca_file):
    config = client.Configuration()
    InClusterConfigLoader(token_filename=token_file, cert_filename=ca_file,
                          environ={"KUBERNETES_SERVICE_HOST": host,
                                   "KUBERNETES_SERVICE_PORT": port}).load_and_set(config)
    api = client.ApiClient(config)
    v1 = client.CoreV1Api(api)

    # The bot may read pods in its namespace (a RoleBinding says so) ...
    pods = v1.list_namespaced_pod("default")
    check("list pods in its namespace", any(p.metadata.name == "runner" for p in pods.items), pods)

    # ... and nothing RBAC does not grant it: upstream's 403.
    try:
        v1.list_namespaced_secret("kube-system")
        check("secrets refused", False, "listed")
    except ApiException as e:
        check("secrets refused", e.status == 403 and
              'User \\"system:serviceaccount:default:bot\\" cannot list resource \\"secrets\\"' in e.body,
              (e.status, e.body))

    # Its own access, as it sees it.
    authz = client.AuthorizationV1Api(api)
    review = authz.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
            namespace="default", verb="watch", resource="pods"))))
    check("self access review", review.status.allowed and "RoleBinding \"bot-pods/default\"" in review.status.reason,
          review.status)
    who = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
    check("self subject review", who.status.user_info.username == "system:serviceaccount:default:bot"
          and "system:serviceaccounts:default" in who.status.user_info.groups, who.status)


if __name__ == "__main__":
    main(*sys.argv[1:5])
